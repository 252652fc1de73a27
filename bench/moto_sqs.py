"""A moto server for the enqueue benchmark: ``python -m bench.moto_sqs PORT``.

moto recomputes every queue attribute on every message it accepts, and its approximate message
counts walk the whole queue: sending n messages costs O(n^2) in the mock (a batch takes 9 ms on
an empty queue, 200 ms once it holds 2,000 messages). Real SQS does nothing of the sort. This
server answers the three ``ApproximateNumberOfMessages*`` counts from the queue's length (exact
while nothing is received or delayed, which is the benchmark's case) so that the benchmark
measures the client and the HTTP round trips, not moto's bookkeeping. It also keeps HTTP
connections alive (werkzeug's development server closes each after one request; SQS does not).
"""

from __future__ import annotations

import logging
import sys


def main(port: int) -> None:
    import functools

    from moto import backends
    from moto.server import ThreadedMotoServer
    from moto.sqs import models
    from werkzeug.serving import WSGIRequestHandler

    models.Queue.approximate_number_of_messages = property(lambda self: len(self._messages))  # type: ignore[assignment]
    models.Queue.approximate_number_of_messages_not_visible = property(lambda self: 0)  # type: ignore[assignment]
    models.Queue.approximate_number_of_messages_delayed = property(lambda self: 0)  # type: ignore[assignment]
    models.camelcase_to_underscores = functools.lru_cache(maxsize=None)(models.camelcase_to_underscores)  # type: ignore[attr-defined]
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
    # Keep-alive, as SQS clients have with SQS: werkzeug's development server speaks HTTP/1.0 and
    # closes every connection after one request, so each batch would pay a TCP connect (and with
    # keep-alive, Nagle would hold each response's body behind its headers).
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    WSGIRequestHandler.disable_nagle_algorithm = True
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
