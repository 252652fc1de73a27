"""HrefPolicy: what a worker may read, refused with a one-line reason before any read."""

from __future__ import annotations

import pickle

import pytest

from cubeless.errors import HrefNotAllowed
from cubeless.hrefs import SENTINEL2_COG_HOSTS, HrefPolicy
from cubeless.spec import parse_spec

COG = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/T/UM/2020/1/S2A_33TUM_20200103_0_L2A/B04.tif"
E84 = "https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/sentinel-2-c1-l2a/33/T/UM/2020/1/x/B04.tif"


def spec(**kw):
    return parse_spec({"name": "h", "bbox": [15, 45, 15.1, 45.1], "start": "2020-01-01", "end": "2020-01-31",
                       "store": "/tmp/h.zarr", **kw})


def test_local_policy_allows_local_files_s3_and_listed_https_hosts():
    p = HrefPolicy.local("data.example.com")
    for href in ["/data/x.tif", "./x.tif", "x.tif", "file:///data/x.tif", "file://localhost/data/x.tif",
                 "s3://any-bucket/key.tif", "https://data.example.com/x.tif", "https://DATA.example.com./x.tif",
                 "https://data.example.com:8443/x.tif?sig=abc"]:
        assert p.allows(href), href
        p.check(href)
    for href in ["https://other.example.com/x.tif", "http://data.example.com/x.tif", "gs://b/k.tif",
                 "zip+https://data.example.com/x.zip"]:
        assert not p.allows(href), href


def test_default_policy_for_a_spec_has_its_stac_api_and_the_sentinel2_cog_hosts():
    p = HrefPolicy.for_spec(spec())
    assert p.allows(COG) and p.allows(E84)
    assert p.allows("https://earth-search.aws.element84.com/v1/x.tif")
    assert p.allows("/local/scene.tif") and p.allows("s3://sentinel-cogs/x.tif")
    assert not p.allows("https://evil.example.com/B04.tif")
    assert set(SENTINEL2_COG_HOSTS) <= set(p.hosts)
    # HrefPolicy.local(spec) is the same default
    assert HrefPolicy.local(spec()) == p
    # a local http STAC API (test servers) also allows plain http on the listed hosts
    q = HrefPolicy.for_spec(spec(stac_api="http://127.0.0.1:9000"))
    assert q.allows("http://127.0.0.1:9000/a.tif") and not q.allows("http://127.0.0.2:9000/a.tif")


def test_from_hosts_refuses_local_files_and_other_schemes_by_default():
    p = HrefPolicy.from_hosts(["*.amazonaws.com"])
    assert p.allows(COG)
    assert not p.allows("/data/x.tif") and not p.allows("file:///x.tif") and not p.allows("s3://b/k")
    assert not p.allows("https://amazonaws.com/x.tif")  # *.suffix needs a subdomain
    assert not p.allows("https://evilamazonaws.com/x.tif")
    assert not p.allows("https://amazonaws.com.evil.net/x.tif")


def test_s3_buckets_can_be_restricted():
    p = HrefPolicy.local(buckets=["sentinel-cogs", "e84-*"])
    assert p.allows("s3://sentinel-cogs/a/b.tif") and p.allows("s3://e84-earth-search-sentinel-data/x.tif")
    assert not p.allows("s3://my-private-bucket/secret.tif")
    with pytest.raises(HrefNotAllowed, match="s3 bucket 'my-private-bucket' is not in the allowlist"):
        p.check("s3://my-private-bucket/secret.tif")
    assert not HrefPolicy.local(buckets=[]).allows("s3://sentinel-cogs/x.tif")
    assert not p.allows("s3:///no-bucket.tif")


@pytest.mark.parametrize(
    "href,why",
    [
        ("/vsicurl/https://evil.example.com/x.tif", "GDAL virtual file system"),
        ("/VSIS3/bucket/x.tif", "GDAL virtual file system"),
        ("/data/../vsicurl/http://evil/x.tif", "GDAL virtual file system"),
        ("file:///vsicurl/http://evil/x.tif", "GDAL virtual file system"),
        ("GTIFF_DIR:1:/vsicurl/http://evil/x.tif", "GDAL virtual file system"),
        ("GTIFF_DIR:1:/data/x.tif", "GDAL connection string"),
        ("HDF5:/data/x.h5://b", "scheme 'hdf5' is not allowed"),
        ("file://fileserver/share/x.tif", "only local files"),
        ("https://user:pw@data.example.com/x.tif", "user info"),
        ("https://data.example.com@evil.example.com/x.tif", "user info"),
        ("https:///x.tif", "no host"),
        ("", "empty"),
        (" https://data.example.com/x.tif", "whitespace"),
        ("https://data.example.com/x.tif\n", "whitespace"),
        ("https://data.example.com/x\x00.tif", "control characters"),
        ("ftp://data.example.com/x.tif", "scheme 'ftp' is not allowed"),
    ],
)
def test_refusals_name_the_reason_on_one_line(href, why):
    p = HrefPolicy.local("data.example.com")
    with pytest.raises(HrefNotAllowed) as err:
        p.check(href)
    msg = str(err.value)
    assert why in msg and "\n" not in msg and len(msg) < 400


def test_non_string_and_long_hrefs():
    p = HrefPolicy.local()
    with pytest.raises(HrefNotAllowed, match="not a string"):
        p.check(None)
    long = "https://evil.example.com/" + "a" * 5000
    with pytest.raises(HrefNotAllowed) as err:
        p.check(long)
    assert len(str(err.value)) < 400 and "..." in str(err.value)


def test_check_all_raises_on_the_first_refused():
    p = HrefPolicy.from_hosts(["a.example.com"])
    p.check_all(["https://a.example.com/1.tif", "https://a.example.com/2.tif"])
    with pytest.raises(HrefNotAllowed, match="b.example.com"):
        p.check_all(["https://a.example.com/1.tif", "https://b.example.com/2.tif"])


def test_ports_match_exactly_when_the_pattern_names_one():
    p = HrefPolicy.from_hosts(["127.0.0.1:8000", "data.example.com"], schemes=["http", "https"])
    assert p.allows("http://127.0.0.1:8000/x.tif")
    assert not p.allows("http://127.0.0.1:8001/x.tif")
    assert p.allows("https://data.example.com:9443/x.tif")  # no port in the pattern: any port


def test_policy_is_frozen_hashable_picklable_and_validates_hosts():
    p = HrefPolicy.for_spec(spec())
    assert pickle.loads(pickle.dumps(p)) == p
    assert hash(p) == hash(pickle.loads(pickle.dumps(p)))
    with pytest.raises(AttributeError):
        p.allow_local = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="not a host name"):
        HrefPolicy.from_hosts(["https://a.example.com"])
    with pytest.raises(ValueError, match="not a host name"):
        HrefPolicy.from_hosts(["a.*.com"])
