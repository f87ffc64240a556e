"""raycredit/storage.py without a server: URIs (joined, printed, refused) and a Place in a local folder (object
storage itself: test_s3.py, on a real S3 server)."""

import os

import pytest

from raycredit.errors import UserError
from raycredit.storage import Place, check_storage, display, join


def test_a_uri_keeps_its_query_last_and_is_printed_without_query_or_keys():
    assert join("s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http", "scan-1a2b", "checkpoints") == (
        "s3://bucket/sweeps/scan-1a2b/checkpoints?endpoint_override=127.0.0.1:9000&scheme=http")
    assert join("s3://bucket", "scan") == "s3://bucket/scan"
    assert join("/data/ray", "scan") == "/data/ray/scan"
    assert display("s3://bucket/sweeps?endpoint_override=127.0.0.1:9000") == "s3://bucket/sweeps"
    assert display("s3://AKIAX:hunter2@bucket/sweeps") == "s3://bucket/sweeps"


@pytest.mark.parametrize("where,words", [
    ("s3://AKIAX:hunter2@bucket/sweeps", "credentials in the URI"),
    ("file:///tmp/ray", "as a path, not a file:// URI"),
    ("nosuchscheme://host/sweeps", "Unrecognized filesystem type"),
])
def test_object_storage_that_cannot_be_used_is_one_clear_error(where, words):
    with pytest.raises(UserError, match=words) as e:
        check_storage(where)
    assert "hunter2" not in str(e.value)


def test_a_local_place_writes_whole_files_and_never_through_a_planted_symlink(tmp_path):
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("theirs")
    root = Place.of(tmp_path / "storage")
    f = root / "trial" / "checkpoint.pt"
    assert not f.exists() and root.children() == []
    f.write_bytes(b"mine")
    assert f.read_bytes() == b"mine" and root.children() == ["trial"] and (root / "trial").is_dir()
    assert [p.name for p in (tmp_path / "storage" / "trial").iterdir()] == ["checkpoint.pt"]  # no temporary left
    link = root / "trial" / "link.pt"
    os.symlink(theirs, link.path)
    with pytest.raises(UserError, match="symbolic link"):
        link.read_bytes()
    link.write_bytes(b"replaced")  # the link itself is replaced, its target untouched
    assert theirs.read_text() == "theirs" and not os.path.islink(link.path)
    os.symlink(tmp_path, (root / "planted").path)
    (root / "planted").remove()  # the link, never the folder it points to
    assert theirs.exists() and not (root / "planted").exists()
    f.move(root / "aside" / "checkpoint.pt")
    assert not f.exists() and (root / "aside" / "checkpoint.pt").read_bytes() == b"mine"
    (root / "trial").remove()
    assert root.children() == ["aside"] and str(root / "aside") == str(tmp_path / "storage" / "aside")
