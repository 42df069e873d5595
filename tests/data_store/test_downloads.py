"""Downloading the built-in datasets in their published formats, offline: fixtures in the original formats
(gzipped IDX, the CIFAR-10 python batches tarball) are built from the project's copies and served by an HTTP
server on 127.0.0.1 inside the test."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest

from dpplat import data, published_data
from dpplat.dataset_types import DatasetError

MNIST_FILES = {"train-images-idx3-ubyte.gz": ("x_train", 3), "train-labels-idx1-ubyte.gz": ("y_train", 1),
               "t10k-images-idx3-ubyte.gz": ("x_test", 3), "t10k-labels-idx1-ubyte.gz": ("y_test", 1)}


def idx_gz(array: np.ndarray) -> bytes:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1)


def cifar_tarball(arrays: dict[str, np.ndarray], per_batch: int) -> bytes:
    """The python batches layout: cifar-10-batches-py/data_batch_1..5 and test_batch, pickled dicts with bytes keys."""
    def batch(x, y, label):
        flat = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
        return pickle.dumps({b"batch_label": label, b"labels": [int(v) for v in y], b"data": flat,
                             b"filenames": [b"%d.png" % i for i in range(len(x))]}, protocol=2)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {f"data_batch_{i + 1}": batch(arrays["x_train"][i * per_batch:(i + 1) * per_batch],
                                                arrays["y_train"][i * per_batch:(i + 1) * per_batch], b"train")
                   for i in range(5)}
        members["test_batch"] = batch(arrays["x_test"][:per_batch], arrays["y_test"][:per_batch], b"test")
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the fixture folder; a path under /short/ announces more bytes than it sends."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/short/"):
            body = (self.server.root / self.path[len("/short/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A local HTTP mirror laid out as <URL>/<dataset>/<file>, and each fixture file's MD5."""
    root = tmp_path_factory.mktemp("mirror")
    md5 = {}
    mnist = data.load_arrays("mnist")
    (root / "mnist").mkdir()
    for file, (key, _) in MNIST_FILES.items():
        blob = idx_gz(mnist[key])
        (root / "mnist" / file).write_bytes(blob)
        md5[("mnist", file)] = hashlib.md5(blob).hexdigest()
    (root / "cifar10").mkdir()
    cifar = data.load_arrays("cifar10-jpeg")
    blob = cifar_tarball(cifar, per_batch=40)
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(blob)
    md5[("cifar10", "cifar-10-python.tar.gz")] = hashlib.md5(blob).hexdigest()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    server.root = root
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    md5["sources"] = {"mnist": mnist, "cifar10": cifar}
    yield f"http://127.0.0.1:{server.server_address[1]}", root, md5
    server.shutdown()
    server.server_close()


@pytest.fixture
def offline_user(tmp_path, monkeypatch):
    """A user with no data folder and an empty cache."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("DPPLAT_DATA", str(empty))
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def trust_fixtures(monkeypatch, md5, name):
    """Replace the published MD5s by the fixtures' (the fixtures cannot reproduce the published archives' bytes)."""
    source = published_data.SOURCES[name]
    files = {file: md5[(name, file)] for file in source.files}
    monkeypatch.setitem(published_data.SOURCES, name, dataclasses.replace(source, files=files))


def test_mnist_downloads_from_the_mirror_and_decodes_to_the_original_arrays(mirror, offline_user, monkeypatch,
                                                                           capfd):
    url, _, md5 = mirror
    monkeypatch.setenv("DPPLAT_DATA_URL", url)
    trust_fixtures(monkeypatch, md5, "mnist")
    arrays = data.load_arrays("mnist")
    original = md5["sources"]["mnist"]
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(arrays[key], original[key])
    assert f"downloading {url}/mnist/train-images-idx3-ubyte.gz" in capfd.readouterr().err
    assert sorted(p.name for p in (offline_user / "downloads" / "mnist").iterdir()) == sorted(MNIST_FILES)
    # the second load reads the decoded cache: no server needed
    monkeypatch.setenv("DPPLAT_DATA_URL", "http://127.0.0.1:9")
    x, y = data.load_dataset("mnist", "test", subset=20).tensors
    assert x.shape == (20, 1, 28, 28)


def test_cifar10_is_the_original_python_batches_downloaded_and_decoded(mirror, offline_user, monkeypatch):
    url, _, md5 = mirror
    monkeypatch.setenv("DPPLAT_DATA_URL", url)
    trust_fixtures(monkeypatch, md5, "cifar10")
    arrays = data.load_arrays("cifar10")
    source = md5["sources"]["cifar10"]
    assert arrays["x_train"].shape == (200, 32, 32, 3) and arrays["x_test"].shape == (40, 32, 32, 3)
    assert np.array_equal(arrays["x_train"][40:80], source["x_train"][40:80])
    assert np.array_equal(arrays["y_test"], source["y_test"][:40])
    x, _ = data.load_dataset("cifar10", "train").tensors
    assert x.shape == (200, 3, 32, 32)


def test_the_published_checksums_refuse_a_file_that_is_not_the_published_one(mirror, offline_user, monkeypatch):
    url, _, _ = mirror
    monkeypatch.setenv("DPPLAT_DATA_URL", url)
    with pytest.raises(DatasetError, match=r"could not download train-images-idx3-ubyte.gz: .* the file's MD5 is "
                                           r"[0-9a-f]{32}, expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        data.load_arrays("mnist")
    assert not any((offline_user / "downloads" / "mnist").iterdir())  # nothing kept that a later run would trust


def test_a_corrupted_or_truncated_download_is_refused_and_not_kept(mirror, offline_user, monkeypatch):
    url, root, md5 = mirror
    trust_fixtures(monkeypatch, md5, "cifar10")
    monkeypatch.setenv("DPPLAT_DATA_URL", f"{url}/short")
    with pytest.raises(DatasetError, match=r"cifar-10-python.tar.gz: .*closed after \d+ of \d+ bytes"):
        data.load_arrays("cifar10")
    corrupt = root / "corrupt" / "cifar10"
    corrupt.mkdir(parents=True, exist_ok=True)
    blob = bytearray((root / "cifar10" / "cifar-10-python.tar.gz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (corrupt / "cifar-10-python.tar.gz").write_bytes(bytes(blob))
    monkeypatch.setenv("DPPLAT_DATA_URL", f"{url}/corrupt")
    with pytest.raises(DatasetError, match="a corrupt or different file"):
        data.load_arrays("cifar10")
    assert not any((offline_user / "downloads" / "cifar10").iterdir())
    assert not (offline_user / "datasets").exists()


def test_official_files_put_in_the_cache_by_hand_are_used_without_network(mirror, offline_user, monkeypatch):
    _, root, md5 = mirror
    trust_fixtures(monkeypatch, md5, "cifar10")
    monkeypatch.setenv("DPPLAT_DATA_URL", "http://127.0.0.1:9")  # nothing listens there
    folder = offline_user / "downloads" / "cifar10"
    folder.mkdir(parents=True)
    (folder / "cifar-10-python.tar.gz").write_bytes((root / "cifar10" / "cifar-10-python.tar.gz").read_bytes())
    assert data.load_arrays("cifar10")["y_train"].shape == (200,)


def test_a_failed_download_says_how_to_fix_it_without_naming_the_projects_folders(offline_user, monkeypatch):
    monkeypatch.setattr(data, "_checkout_data_dir", lambda: None)  # as a user who installed dpplat elsewhere
    monkeypatch.setenv("DPPLAT_DATA_URL", "http://127.0.0.1:9")
    with pytest.raises(DatasetError) as err:
        data.load_arrays("fashion-mnist")
    message = str(err.value)
    assert "http://127.0.0.1:9/fashion-mnist/train-images-idx3-ubyte.gz" in message
    assert "DPPLAT_DATA_URL" in message and str(offline_user / "downloads" / "fashion-mnist") in message
    assert "shared" not in message and "checkout" not in message and "\n" not in message


def test_the_idx_reader_refuses_a_file_of_the_wrong_format(tmp_path):
    wrong = tmp_path / "labels.gz"
    wrong.write_bytes(idx_gz(np.zeros((4, 2, 2), dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"labels.gz is not an IDX file of 1-dimensional unsigned bytes"):
        published_data.read_idx(wrong, 1)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress((0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (5, 2, 2))
                                    + bytes(7)))
    with pytest.raises(DatasetError, match=r"holds 7 bytes of data, but its header announces shape \(5, 2, 2\)"):
        published_data.read_idx(short, 3)
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        (tmp_path / "plain").write_bytes(b"not gzip")
        published_data.read_idx(tmp_path / "plain", 1)


def test_a_cifar_batch_that_references_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        blob = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DatasetError, match="is not a CIFAR-10 python batch .*does not reference .*print"):
        published_data.read_cifar_tarball(path)
