"""Raw-file fetching against a local HTTP server, and the IDX reader on files written by the test."""
import gzip
import hashlib
import http.server
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmbench.data import mnist
from mmbench.data.download import Resource, fetch
from mmbench.errors import MMBenchError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class Handler(http.server.BaseHTTPRequestHandler):
    ranges = []
    paths = []  # every requested path, in order
    release = threading.Event()  # "stall" mode: the rest of the body is sent once this is set (or after 5 s)

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
        if mode != "nolength":  # "nolength": no Content-Length, the body ends where the connection closes
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode in ("short1", "stall"):  # all but the last byte, then close; or four fifths, a pause, then the rest
            cut = len(data) - 1 if mode == "short1" else len(data) * 4 // 5
            self.wfile.write(data[:cut])
            self.wfile.flush()
            if mode == "stall":
                Handler.release.wait(5)
                try:
                    self.wfile.write(data[cut:])
                except OSError:  # the client gave up waiting
                    pass
            self.connection.close()
            return
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
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # a quick shutdown
    t.start()
    Handler.ranges = []
    Handler.paths = []
    Handler.release = threading.Event()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()  # its listening socket


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
    with pytest.raises(MMBenchError) as e:
        fetch(Resource("g.bin", md5(PAYLOAD), []), tmp_path / "raw", source=src)
    assert str(e.value) == f"g.bin is not in --source {src}; put it there or drop --source to download it"
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


@pytest.mark.parametrize("md5sum", [md5(PAYLOAD), None])
def test_a_download_one_byte_short_is_kept_to_resume_not_put_in_place(server, tmp_path, md5sum):
    """The connection closes one byte before the Content-Length: the .part is kept for the next run to resume (with
    or without a published md5 to catch it later), never renamed into place."""
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    with pytest.raises(MMBenchError, match=f"stopped at {len(PAYLOAD) - 1} of {len(PAYLOAD)} bytes"):
        fetch(Resource("f.bin", md5sum, [f"{url}/short1/f.bin"]), tmp_path)
    assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[:-1] and not (tmp_path / "f.bin").exists()
    assert fetch(Resource("f.bin", md5sum, [f"{url}/good/f.bin"]), tmp_path).read_bytes() == PAYLOAD
    assert Handler.ranges[-1] == f"bytes={len(PAYLOAD) - 1}-"


def test_every_failed_mirror_is_named_with_its_own_error(server, tmp_path):
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    first, second = f"{url}/good/nothere", f"{url}/short1/f.bin"
    with pytest.raises(MMBenchError) as e:
        fetch(Resource("f.bin", md5(PAYLOAD), [first, second]), tmp_path)
    message = str(e.value)
    assert message.startswith(f"could not download f.bin ({first}: Not Found; {second}: download of {second} stopped at")
    assert message.endswith("); download it yourself and pass --source DIR")


def test_a_file_without_urls_or_source_says_to_download_it_yourself(tmp_path):
    with pytest.raises(MMBenchError, match=r"^f.bin has no download URL; download it yourself and pass --source DIR$"):
        fetch(Resource("f.bin", md5(PAYLOAD), []), tmp_path)


@pytest.mark.parametrize("mode", ["good", "nolength"])
def test_download_progress_names_the_file_and_counts_the_whole_file(server, tmp_path, mode):
    """Progress is reported as ("download <name>", bytes held, whole size), a resumed download counting the bytes it
    already had; without a Content-Length the size is what has arrived."""
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    calls = []
    fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/{mode}/f.bin"]), tmp_path, progress=lambda *a: calls.append(a))
    assert {label for label, _, _ in calls} == {"download f.bin"}
    assert calls[-1][1:] == (len(PAYLOAD), len(PAYLOAD))
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and done[0] > 1000
    if mode == "good":
        assert {t for _, _, t in calls} == {len(PAYLOAD)}
    else:
        assert all(t == d for _, d, t in calls)


def test_a_stalled_download_times_out_and_keeps_its_bytes(server, tmp_path):
    """A server that stops sending mid-file: `timeout` bounds the wait, the failure is reported as a failed download
    (not a raw socket error) and the bytes that came stay in the .part for the next run."""
    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    t0 = time.monotonic()
    try:  # 1 s: long enough for a loaded machine to send the first four fifths, well short of the server's 5 s pause
        with pytest.raises(MMBenchError, match=f"could not download f.bin .*{url}/stall/f.bin: "):
            fetch(Resource("f.bin", md5(PAYLOAD), [f"{url}/stall/f.bin"]), tmp_path, timeout=1.0)
    finally:
        Handler.release.set()
    assert time.monotonic() - t0 < 4.5
    part = (tmp_path / "f.bin.part").read_bytes()  # the whole blocks read before the stall
    assert 0 < len(part) <= len(PAYLOAD) * 4 // 5 and PAYLOAD.startswith(part)


def test_source_is_read_in_place_before_any_copy_in_the_raw_folder(tmp_path):
    """--source wins over a file already in the raw folder (even a corrupt one, which it leaves alone), and the user's
    copy is returned where it is, not duplicated into the raw folder."""
    src, raw = tmp_path / "src", tmp_path / "raw"
    src.mkdir()
    (src / "f.bin").write_bytes(PAYLOAD)
    assert fetch(Resource("f.bin", md5(PAYLOAD), []), raw, source=src) == src / "f.bin"
    assert not (raw / "f.bin").exists()
    (raw / "f.bin").write_bytes(b"stale")
    assert fetch(Resource("f.bin", md5(PAYLOAD), []), raw, source=src) == src / "f.bin"
    assert (raw / "f.bin").read_bytes() == b"stale"


def test_a_folder_in_place_of_a_raw_file_or_a_file_in_place_of_the_raw_folder_says_what_to_move(tmp_path):
    """A folder named as the file (an archive unpacked into a folder of its name) in --source or in the raw folder was
    an IsADirectoryError from the md5 check, a file where the raw folder goes a FileExistsError / NotADirectoryError
    (the CLI showed them as "PATH: Is a directory (check the path and its permissions)", without the fix)."""
    src, raw = tmp_path / "src", tmp_path / "raw"
    (src / "f.bin").mkdir(parents=True)
    with pytest.raises(MMBenchError, match=r"src/f.bin is a folder, not the file f.bin; put the file itself in "
                                           r"--source .*src$"):
        fetch(Resource("f.bin", md5(PAYLOAD), []), raw, source=src)
    (raw / "f.bin").mkdir(parents=True)
    with pytest.raises(MMBenchError, match=r"raw/f.bin is a folder where the downloaded f.bin belongs; remove it"):
        fetch(Resource("f.bin", md5(PAYLOAD), ["http://127.0.0.1:9/f.bin"]), raw)
    assert (raw / "f.bin").is_dir()  # not ours to delete
    (src / "f.bin").rmdir()
    (src / "f.bin").write_bytes(PAYLOAD)
    (raw / "mnist").write_bytes(b"")
    for where in (raw / "mnist", raw / "mnist" / "x"):  # were FileExistsError, NotADirectoryError
        with pytest.raises(MMBenchError, match=fr"{where} cannot be made, a file is in the way .*; move that file away") as e:
            fetch(Resource("f.bin", md5(PAYLOAD), []), where, source=src)
        assert "\n" not in str(e.value)


# ----- behaviours a mutation pass found unguarded -----
def test_idx_magic_bytes_and_a_file_longer_than_its_header_are_refused(tmp_path):
    # IDX format: the magic number's first two bytes are zero; the data is exactly the header's dims × item size
    (tmp_path / "y").write_bytes(bytes([0, 0, 0x08, 1]) + (2).to_bytes(4, "big") + bytes([3, 7]))
    assert mnist.read_idx(tmp_path / "y").tolist() == [3, 7]
    for i in (0, 1):
        bad = bytearray((tmp_path / "y").read_bytes())
        bad[i] = 1
        (tmp_path / "bad").write_bytes(bytes(bad))
        with pytest.raises(MMBenchError, match="not an IDX file"):
            mnist.read_idx(tmp_path / "bad")
    (tmp_path / "long").write_bytes((tmp_path / "y").read_bytes() + b"\x00")
    with pytest.raises(MMBenchError, match="IDX header promises 2 values of uint8, the file holds 3 bytes"):
        mnist.read_idx(tmp_path / "long")


@pytest.mark.parametrize("n_images, n_labels", [(4, 3), (3, 4)])
def test_mnist_images_and_labels_of_other_counts_are_refused(tmp_path, monkeypatch, n_images, n_labels):
    # mnist.load: the images file and the labels file of a split must describe the same digits
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((n_images, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(n_labels, dtype=np.uint8))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        monkeypatch.setitem(mnist.FILES, name, hashlib.md5((tmp_path / name).read_bytes()).hexdigest())
    with pytest.raises(MMBenchError, match=f"MNIST test: {n_images} images but {n_labels} labels"):
        mnist.load("test", tmp_path / "raw", source=tmp_path)


def test_a_full_disk_during_a_download_keeps_its_bytes_tries_no_other_mirror_and_says_to_free_space(server, tmp_path):
    # download._download: a failed write of the partial file was taken for the mirror's failure, so every other
    # mirror was tried (each failing the same way) and the advice was to download the file by hand
    from conftest import file_size_limit

    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    res = Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin", f"{url}/norange/f.bin"])
    part = tmp_path / "f.bin.part"
    with file_size_limit(len(PAYLOAD) // 2), pytest.raises(MMBenchError) as e:
        fetch(res, tmp_path)
    assert Handler.paths == ["/good/f.bin"]
    held = part.stat().st_size
    assert 0 < held <= len(PAYLOAD) // 2 and part.read_bytes() == PAYLOAD[:held]
    assert re.match(rf"writing the download {re.escape(str(part))} failed after [\d,]+ bytes \(OSError: .*\); they "
                    rf"are kept: free space in {re.escape(str(tmp_path))} \(a full disk or a quota\?\) and run the "
                    rf"command again to resume$", str(e.value)), str(e.value)
    assert fetch(res, tmp_path).read_bytes() == PAYLOAD  # with the space back, the download resumes
    assert Handler.ranges[-1] == f"bytes={held}-"


@pytest.mark.parametrize("fails", ["open", "close"])
def test_a_partial_download_that_cannot_be_opened_or_closed_tries_no_other_mirror(server, tmp_path, monkeypatch, fails):
    # download._download: the partial file's open failing (a full disk, a quota) is the disk's failure, not the
    # mirror's; so is its close (which writes what is buffered)
    import builtins

    import mmbench.data.download as download

    srv, url = server
    srv.files["f.bin"] = PAYLOAD
    res = Resource("f.bin", md5(PAYLOAD), [f"{url}/good/f.bin", f"{url}/norange/f.bin"])
    part = tmp_path / "f.bin.part"

    class ClosingFails:
        def __init__(self, f):
            self.f = f

        def write(self, block):
            return self.f.write(block)

        def close(self):
            self.f.close()
            raise OSError(28, "No space left on device")

    def full(path, *a, **k):
        if Path(path) != part:
            return builtins.open(path, *a, **k)
        if fails == "open":
            raise OSError(28, "No space left on device")
        return ClosingFails(builtins.open(path, *a, **k))

    monkeypatch.setattr(download, "open", full, raising=False)
    done = 0 if fails == "open" else len(PAYLOAD)
    with pytest.raises(MMBenchError, match=f"^writing the download {re.escape(str(part))} failed after {done:,} bytes"):
        fetch(res, tmp_path)
    assert Handler.paths == ["/good/f.bin"]
