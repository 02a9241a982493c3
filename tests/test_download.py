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
            if start >= len(body):  # as S3 and Apache answer a range past the end
                self.send_error(416)
                return
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


def test_a_resumed_download_that_stops_again_keeps_its_bytes_and_counts_the_whole_file(server, tmp_path):
    """Truncated twice: the second attempt asks for the rest, appends what came, and reports the bytes held against
    the whole file's size (the bytes already held plus the Content-Length of the rest)."""
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    res = Resource("f.bin", md5(PAYLOAD), [f"{url}/truncated/f.bin"])
    with pytest.raises(MMBenchError):
        fetch(res, tmp_path)
    have = len(PAYLOAD) // 3  # the test server sends a third of what is asked for
    held = have + (len(PAYLOAD) - have) // 3
    with pytest.raises(MMBenchError, match=f"stopped at {held} of {len(PAYLOAD)} bytes; run again to resume"):
        fetch(res, tmp_path)
    assert Handler.ranges[-1] == f"bytes={have}-"
    assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[:held] and not (tmp_path / "f.bin").exists()


def test_file_digest_reads_the_whole_file(tmp_path):
    """Files larger than the 4 MiB read block: the digest is hashlib's over every byte."""
    from mmbench.data.download import file_digest

    data = bytes(range(256)) * (5 * 4096) + b"tail"  # 5 MiB + 4 bytes
    (tmp_path / "big").write_bytes(data)
    assert file_digest(tmp_path / "big") == hashlib.md5(data).hexdigest()
    assert file_digest(tmp_path / "big", "sha256") == hashlib.sha256(data).hexdigest()


def test_canonical_urls_and_published_md5s():
    """The raw files' sources and their published md5s, written out here (torchvision's MNIST, SVHN and CelebA
    dataset classes list the same values), and PolyMNIST's archive at Zenodo record 4899160 (README "Datasets")."""
    from mmbench.data import celeba, mnist_svhn_text, polymnist

    assert mnist.MIRRORS == ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    assert mnist.FILES == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert mnist.resource("t10k-images-idx3-ubyte.gz").urls == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz")
    assert {k: (r.filename, r.md5, tuple(r.urls)) for k, r in mnist_svhn_text.SVHN.items()} == {
        "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373",
                  ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",)),
        "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3",
                 ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",)),
    }
    assert celeba.FILES == {"img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
                            "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
                            "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668"}
    assert (polymnist.ARCHIVE.filename, tuple(polymnist.ARCHIVE.urls)) == (
        "PolyMNIST.zip", ("https://zenodo.org/records/4899160/files/PolyMNIST.zip?download=1",
                          "https://zenodo.org/record/4899160/files/PolyMNIST.zip"))


@pytest.mark.parametrize("extra", [b"", b"x"])
def test_a_partial_file_as_long_as_the_file_restarts(server, tmp_path, extra):
    """A .part that already holds every byte (killed before the rename) or more: the server answers the range with
    416, and the download starts over instead of failing on every run."""
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + extra)
    path = fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin"]), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert Handler.ranges == [f"bytes={len(PAYLOAD + extra)}-", None]


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

    from mmbench.files import usual_mode
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
            assert target.stat().st_mode & 0o777 == usual_mode()  # readable by others as any file, not 0600
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
