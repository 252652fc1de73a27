"""Powertools Logger, Metrics and Tracer, created once per process and shared by every handler.

Each function's ``POWERTOOLS_SERVICE_NAME`` (planner, worker, commit) names its logs, traces and
the ``service`` dimension of its metrics; every metric goes to the ``cubeless`` namespace, which
the stack's dashboard reads. Nothing here does I/O.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

NAMESPACE = "cubeless"

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)
# Trace boto3 calls (SQS, S3 pointers) only: s3fs's chunk reads and writes would be thousands of
# subsegments per task.
tracer = Tracer(patch_modules=("botocore",))
