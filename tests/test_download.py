"""Raw-file fetching against a local HTTP server, and the IDX reader on files written by the test."""
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from mmbench.data import mnist
from mmbench.data.download import Resource, fetch
from mmbench.errors import MMBenchError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class Handler(http.server.BaseHTTPRequestHandler):
    ranges = []
    paths = []  # every requested path, in order

    def log_message(self, *a):
        pass

    def do_GET(self):
        Handler.paths.append(self.path)
        mode, _, name = self.path.strip("/").partition("/")
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        Handler.ranges.append(rng)
        if rng and mode != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "truncated":
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.connection.close()
            return
        if mode == "corrupt":
            data = bytes(b ^ 0xFF for b in data)
        self.wfile.write(data)


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files = {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Handler.ranges = []
    Handler.paths = []
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def md5(b):
    return hashlib.md5(b).hexdigest()


def test_download_verifies(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    path = fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin"]), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/missing/x"]), tmp_path) == path  # already there
    # a corrupt file already in place (e.g. killed between rename and check) is checked, deleted and fetched again
    path.write_bytes(PAYLOAD[:-1])
    with pytest.raises(MMBenchError, match="does not match the published .* the file was deleted"):
        fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin"]), tmp_path)
    assert not path.exists()
    assert fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin"]), tmp_path).read_bytes() == PAYLOAD


def test_truncated_download_resumes(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    res = Resource("f.bin", md5(PAYLOAD), [f"{url}/truncated/f.bin"])
    with pytest.raises(MMBenchError, match="could not download f.bin"):
        fetch(res, tmp_path)
    part = tmp_path / "f.bin.part"
    assert 0 < part.stat().st_size < len(PAYLOAD) and not (tmp_path / "f.bin").exists()
    have = part.stat().st_size
    path = fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin"]), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert Handler.ranges[-1] == f"bytes={have}-"  # resumed, not restarted


def test_server_without_range_support_restarts(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    path = fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/norange/f.bin"]), tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_corrupted_download_is_deleted_with_a_clear_message(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    bad = md5(bytes(b ^ 0xFF for b in PAYLOAD))
    with pytest.raises(MMBenchError) as e:
        fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/corrupt/f.bin"]), tmp_path)
    assert f"f.bin: md5 {bad} does not match the published {md5(PAYLOAD)}" in str(e.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_mirrors_are_tried_in_order(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    mirrors = [f"{url}/good/nothere", f"{url}/norange/alsonot", f"{url}/good/f.bin", f"{url}/norange/f.bin"]
    path = fetch(Resource("f.bin", md5(PAYLOAD), mirrors), tmp_path)
    assert path.read_bytes() == PAYLOAD
    # first to last, stopping at the first that works
    assert Handler.paths == ["/good/nothere", "/norange/alsonot", "/good/f.bin"]


FID_BYTES = b"not really inception weights" * 1000


@pytest.mark.parametrize("case", ["404", "wrong-sha", "right-sha"])
def test_fid_weights_default_download_path(server, tmp_path, monkeypatch, case):
    """resolve_weights(None): the torch hub cache copy, downloaded from FID_WEIGHTS_URL when missing; a failed
    or wrong-sha256 download is a hard error that leaves nothing behind."""
    import torch

    from mmbench.metrics import fid as fidm

    srv, url = server
    srv.files[fidm.FID_WEIGHTS_FILE] = FID_BYTES
    name = fidm.FID_WEIGHTS_FILE if case != "404" else "missing.pth"
    monkeypatch.setattr(fidm, "FID_WEIGHTS_URL", f"{url}/good/{name}")
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        sha = hashlib.sha256(FID_BYTES).hexdigest()
        target = tmp_path / "hub" / "checkpoints" / fidm.FID_WEIGHTS_FILE
        if case == "right-sha":
            assert fidm.resolve_weights(None, sha) == target and target.read_bytes() == FID_BYTES
            assert Handler.paths == [f"/good/{name}"]
            assert fidm.resolve_weights(None, sha) == target and len(Handler.paths) == 1  # cached: no second download
            return
        wanted = sha if case == "404" else hashlib.sha256(b"the published file").hexdigest()
        with pytest.raises(MMBenchError) as e:
            fidm.resolve_weights(None, wanted)
        msg = str(e.value)
        if case == "404":
            assert "could not download the FID Inception weights (HTTPError" in msg
        else:
            assert f"has sha256 {sha[:16]}…, expected {wanted[:16]}…" in msg
        assert "--fid-weights PATH" in msg  # says how to supply the file by hand
        assert Handler.paths == [f"/good/{name}"]
        assert not target.exists() and list(target.parent.iterdir()) == []  # no temp file, no bad copy
    finally:
        torch.hub.set_dir(old_hub)


def test_source_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(PAYLOAD)
    path = fetch(Resource("f.bin", md5(PAYLOAD), []), tmp_path / "raw", source=src)
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(MMBenchError, match="g.bin is not in --source"):
        fetch(Resource("g.bin", md5(PAYLOAD), []), tmp_path / "raw", source=src)
    (src / "f.bin").write_bytes(PAYLOAD[:-1])
    with pytest.raises(MMBenchError, match="replace .* with an intact copy"):
        fetch(Resource("f.bin", md5(PAYLOAD), []), tmp_path / "raw2", source=src)
    assert (src / "f.bin").exists()  # the user's own file is never deleted


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()  # IDX data is big-endian
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x.gz", a)
    write_idx(tmp_path / "y", np.array([3, 7], np.uint8))
    assert np.array_equal(mnist.read_idx(tmp_path / "x.gz"), a)
    assert mnist.read_idx(tmp_path / "y").tolist() == [3, 7]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(MMBenchError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "y").read_bytes()[:-1])
    with pytest.raises(MMBenchError, match="IDX header promises 2 values"):
        mnist.read_idx(tmp_path / "short")


def test_idx_int16_is_big_endian(tmp_path):
    # mnist.read_idx docstring and the IDX format (yann.lecun.com/exdb/mnist): type 0x0B is a big-endian 2-byte int
    a = np.array([[-32768, -300, -1, 0], [1, 255, 256, 32767]], np.int16)
    write_idx(tmp_path / "z", a)
    assert (tmp_path / "z").read_bytes()[12:16] == b"\x80\x00\xfe\xd4"  # -32768, -300: high byte first
    back = mnist.read_idx(tmp_path / "z")
    assert back.dtype == np.int16 and back.tolist() == a.tolist()


def test_mnist_load_downloads_from_mirror(server, tmp_path, monkeypatch):
    srv, url = server
    imgs = np.random.default_rng(0).integers(0, 256, (30, 28, 28)).astype(np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    write_idx(tmp_path / "i.gz", imgs)
    write_idx(tmp_path / "l.gz", labels)
    srv.files["t10k-images-idx3-ubyte.gz"] = (tmp_path / "i.gz").read_bytes()
    srv.files["t10k-labels-idx1-ubyte.gz"] = (tmp_path / "l.gz").read_bytes()
    monkeypatch.setattr(mnist, "MIRRORS", (f"{url}/good/",))
    monkeypatch.setitem(mnist.FILES, "t10k-images-idx3-ubyte.gz", md5(srv.files["t10k-images-idx3-ubyte.gz"]))
    monkeypatch.setitem(mnist.FILES, "t10k-labels-idx1-ubyte.gz", md5(srv.files["t10k-labels-idx1-ubyte.gz"]))
    x, y = mnist.load("test", tmp_path / "raw")
    assert np.array_equal(x, imgs) and y.tolist() == labels.tolist() and y.dtype == np.int64


def test_a_source_copy_that_fails_its_checksum_is_the_users_to_replace(tmp_path):
    """A file from --source with the wrong md5: the message says it is the user's copy, names the canonical URL to
    download it from, and never says to delete it (the file stays)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(PAYLOAD[:-1])
    with pytest.raises(MMBenchError) as e:
        fetch(Resource("f.bin", md5(PAYLOAD), ["https://example.org/f.bin"]), tmp_path / "raw", source=src)
    message = str(e.value)
    assert message.startswith(f"{src / 'f.bin'} fails its checksum (md5 {md5(PAYLOAD[:-1])}, published {md5(PAYLOAD)})")
    assert "your copy (from --source)" in message and "download it from https://example.org/f.bin" in message
    assert "delete" not in message and (src / "f.bin").read_bytes() == PAYLOAD[:-1]
