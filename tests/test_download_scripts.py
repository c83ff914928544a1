"""The download scripts against a local HTTP server: resumable, atomic, clear failures.

Each test copies a script into a temporary repository layout, so it writes there (and not into
the checkout), and points it at a server on 127.0.0.1 through DDPMSEG_DOWNLOAD_BASE.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO

CKPT_SCRIPT = "checkpoints/ddpm/download_checkpoint.sh"
DATA_SCRIPT = "datasets/download_datasets.sh"
CKPT_URL = "/models/ddpm_checkpoints/ffhq.pt"
# The comparison backbones' scripts share download_lib's download_checkpoint with the DDPM one.
BASELINE_SCRIPTS = {f"checkpoints/{kind}/download_checkpoint.sh": f"/models/{kind}_checkpoints/lsun_cat.pth"
                    for kind in ("mae", "swav", "swav_w2")}

# The newer backbones' scripts (scripts/download_models.sh): hub folders and DINOv2's official files.
DIFFUSERS_SCRIPT = "checkpoints/diffusers/download_checkpoint.sh"
SD_SCRIPT = "checkpoints/stable_diffusion/download_checkpoint.sh"
DINOV2_SCRIPT = "checkpoints/dinov2/download_checkpoint.sh"
MODEL_SCRIPTS = (DIFFUSERS_SCRIPT, SD_SCRIPT, DINOV2_SCRIPT)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the scripts need curl")


class Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` support; `server.cut_after` truncates the next response."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cut_after is not None:  # announce the full length, send less, hang up
            body, srv.cut_after = body[: srv.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.cut_after = {}, [], None
    thread = threading.Thread(target=lambda: srv.serve_forever(poll_interval=0.05), daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def repo(tmp_path):
    """A scratch repository root holding copies of the two scripts."""
    root = tmp_path / "repo"
    for rel in (CKPT_SCRIPT, *BASELINE_SCRIPTS, DATA_SCRIPT, "scripts/download_lib.sh", *MODEL_SCRIPTS,
                "scripts/download_models.sh"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


def run(repo: Path, script: str, *args: str, base: str) -> subprocess.CompletedProcess:
    """Run a script from an unrelated directory, with proxies off so traffic stays local."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(DDPMSEG_DOWNLOAD_BASE=base, DDPMSEG_HUB_BASE=base, DDPMSEG_DINOV2_BASE=base, NO_PROXY="*")
    return subprocess.run(
        ["bash", str(repo / script), *args], cwd=repo.parent, env=env,
        capture_output=True, text=True, timeout=30,
    )


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_checkpoint_download_lands_atomically(server, repo):
    payload = os.urandom(300_000)
    server.files[CKPT_URL] = payload
    r = run(repo, CKPT_SCRIPT, "ffhq", base=server.base)
    assert r.returncode == 0, r.stderr
    assert (repo / "checkpoints/ddpm/ffhq.pt").read_bytes() == payload
    assert listing(repo / "checkpoints/ddpm") == ["download_checkpoint.sh", "ffhq.pt"]
    assert server.requests == [(CKPT_URL, None)]


@pytest.mark.parametrize("script", BASELINE_SCRIPTS)
def test_baseline_checkpoints_come_from_the_original_urls(server, repo, script):
    payload = os.urandom(5000)
    server.files[BASELINE_SCRIPTS[script]] = payload
    r = run(repo, script, "lsun_cat", base=server.base)
    assert r.returncode == 0, r.stderr
    folder = (repo / script).parent
    assert (folder / "lsun_cat.pth").read_bytes() == payload
    assert listing(folder) == ["download_checkpoint.sh", "lsun_cat.pth"]
    assert run(repo, script, "lsun_church", base=server.base).returncode == 2


def test_interrupted_checkpoint_download_resumes_with_range(server, repo):
    payload = os.urandom(300_000)
    server.files[CKPT_URL] = payload
    server.cut_after = 100_000
    r = run(repo, CKPT_SCRIPT, "ffhq", base=server.base)
    assert r.returncode != 0
    assert "rerun to resume" in r.stderr
    part = repo / "checkpoints/ddpm/ffhq.pt.part"
    assert listing(repo / "checkpoints/ddpm") == ["download_checkpoint.sh", "ffhq.pt.part"]
    assert part.read_bytes() == payload[:100_000]

    r = run(repo, CKPT_SCRIPT, "ffhq", base=server.base)
    assert r.returncode == 0, r.stderr
    assert server.requests[-1] == (CKPT_URL, "bytes=100000-")
    assert (repo / "checkpoints/ddpm/ffhq.pt").read_bytes() == payload
    assert not part.exists()


def test_complete_checkpoint_is_not_downloaded_again(server, repo):
    (repo / "checkpoints/ddpm/ffhq.pt").write_bytes(b"already here")
    r = run(repo, CKPT_SCRIPT, "ffhq", base=server.base)
    assert r.returncode == 0, r.stderr
    assert "already exists" in r.stdout
    assert server.requests == []
    assert (repo / "checkpoints/ddpm/ffhq.pt").read_bytes() == b"already here"


def test_complete_part_file_is_renamed_after_a_416(server, repo):
    """A run stopped between the end of the transfer and the rename: the rerun finishes it."""
    payload = os.urandom(1000)
    server.files[CKPT_URL] = payload
    (repo / "checkpoints/ddpm/ffhq.pt.part").write_bytes(payload)
    r = run(repo, CKPT_SCRIPT, "ffhq", base=server.base)
    assert r.returncode == 0, r.stderr
    assert server.requests == [(CKPT_URL, "bytes=1000-")]  # answered 416
    assert (repo / "checkpoints/ddpm/ffhq.pt").read_bytes() == payload
    assert listing(repo / "checkpoints/ddpm") == ["download_checkpoint.sh", "ffhq.pt"]


def test_unreachable_server_fails_with_the_url(repo):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    r = run(repo, CKPT_SCRIPT, "lsun_cat", base=base)
    assert r.returncode != 0
    assert f"{base}/models/ddpm_checkpoints/lsun_cat.pt" in r.stderr
    assert not (repo / "checkpoints/ddpm/lsun_cat.pt").exists()


def test_missing_file_on_server_fails_with_the_url(server, repo):
    r = run(repo, CKPT_SCRIPT, "lsun_horse", base=server.base)
    assert r.returncode != 0
    assert f"{server.base}/models/ddpm_checkpoints/lsun_horse.pt" in r.stderr
    assert listing(repo / "checkpoints/ddpm") == ["download_checkpoint.sh"]


@pytest.mark.parametrize("args", [[], ["lsun_church"], ["ffhq", "extra"]])
def test_bad_checkpoint_name_prints_usage(server, repo, args):
    r = run(repo, CKPT_SCRIPT, *args, base=server.base)
    assert r.returncode == 2
    assert "usage:" in r.stderr
    for name in ("lsun_bedroom", "ffhq", "lsun_cat", "lsun_horse"):
        assert name in r.stderr
    assert server.requests == []


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_dataset_download_extracts_and_removes_the_tarball(server, repo):
    files = {
        "cat_15/real/train/cat_0000001.png": b"png bytes",
        "cat_15/real/train/cat_0000001.npy": b"npy bytes",
        "horse_21/real/test/horse_0000001.npy": b"more bytes",
    }
    server.files["/datasets.tar.gz"] = make_tar_gz(files)
    (repo / "datasets/cat_15").mkdir()  # a stale copy from an earlier download is replaced
    (repo / "datasets/cat_15/stale.npy").write_bytes(b"old")
    r = run(repo, DATA_SCRIPT, base=server.base)
    assert r.returncode == 0, r.stderr
    for name, data in files.items():
        assert (repo / "datasets" / name).read_bytes() == data
    assert listing(repo / "datasets") == ["cat_15", "download_datasets.sh", "horse_21"]
    assert not (repo / "datasets/cat_15/stale.npy").exists()


def test_corrupt_dataset_archive_moves_nothing_into_place(server, repo):
    server.files["/datasets.tar.gz"] = b"this is not a gzip file"
    r = run(repo, DATA_SCRIPT, base=server.base)
    assert r.returncode != 0
    assert "could not extract" in r.stderr
    # the archive is kept for inspection; no dataset folder or temporary folder is left
    assert listing(repo / "datasets") == ["datasets.tar.gz", "download_datasets.sh"]


def test_interrupted_dataset_download_resumes(server, repo):
    archive = make_tar_gz({"celeba_19/real/test/x.npy": os.urandom(50_000)})
    server.files["/datasets.tar.gz"] = archive
    server.cut_after = len(archive) // 2
    r = run(repo, DATA_SCRIPT, base=server.base)
    assert r.returncode != 0
    assert f"{server.base}/datasets.tar.gz" in r.stderr
    assert listing(repo / "datasets") == ["datasets.tar.gz.part", "download_datasets.sh"]

    r = run(repo, DATA_SCRIPT, base=server.base)
    assert r.returncode == 0, r.stderr
    assert server.requests[-1] == ("/datasets.tar.gz", f"bytes={len(archive) // 2}-")
    assert listing(repo / "datasets") == ["celeba_19", "download_datasets.sh"]


def test_dataset_script_takes_no_arguments(server, repo):
    r = run(repo, DATA_SCRIPT, "cat_15", base=server.base)
    assert r.returncode == 2
    assert "usage:" in r.stderr
    assert server.requests == []


DDPM_FILES = ("config.json", "scheduler_config.json", "diffusion_pytorch_model.bin")


def test_hub_folder_lands_atomically_and_resumes_file_by_file(server, repo):
    files = {name: os.urandom(2000 + i) for i, name in enumerate(DDPM_FILES)}
    for name, data in files.items():
        server.files[f"/google/ddpm-ema-cat-256/resolve/main/{name}"] = data
    server.files.pop("/google/ddpm-ema-cat-256/resolve/main/diffusion_pytorch_model.bin")  # the weights fail
    r = run(repo, DIFFUSERS_SCRIPT, "cat", base=server.base)
    assert r.returncode != 0 and "diffusion_pytorch_model.bin" in r.stderr
    folder = repo / "checkpoints/diffusers"
    assert listing(folder) == ["ddpm-ema-cat-256.part", "download_checkpoint.sh"]  # no half folder as model_path
    server.files["/google/ddpm-ema-cat-256/resolve/main/diffusion_pytorch_model.bin"] = files[DDPM_FILES[2]]
    server.requests.clear()
    r = run(repo, DIFFUSERS_SCRIPT, "cat", base=server.base)
    assert r.returncode == 0, r.stderr
    assert [path for path, _ in server.requests] == ["/google/ddpm-ema-cat-256/resolve/main/diffusion_pytorch_model.bin"]
    assert listing(folder) == ["ddpm-ema-cat-256", "download_checkpoint.sh"]
    assert {name: (folder / "ddpm-ema-cat-256" / name).read_bytes() for name in DDPM_FILES} == files
    r = run(repo, DIFFUSERS_SCRIPT, "cat", base=server.base)
    assert r.returncode == 0 and "already exists" in r.stdout


def test_stable_diffusion_folder_has_every_pipeline_part(server, repo):
    prefix = "/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
    # What StableDiffusion.from_config reads (the tokenizer's four files: CLIPTokenizer.from_pretrained).
    names = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
             "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "text_encoder/config.json",
             "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    for name in names:
        server.files[prefix + name] = name.encode()
    r = run(repo, SD_SCRIPT, "sd15", base=server.base)
    assert r.returncode == 0, r.stderr
    out = repo / "checkpoints/stable_diffusion/sd15"
    assert listing(out) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert all((out / name).read_bytes() == name.encode() for name in names)
    assert sorted(path for path, _ in server.requests) == sorted(prefix + name for name in names)


def test_dinov2_checkpoint_comes_from_the_official_url(server, repo):
    payload = os.urandom(3000)
    server.files["/dinov2_vitb14/dinov2_vitb14_pretrain.pth"] = payload
    r = run(repo, DINOV2_SCRIPT, "vitb14", base=server.base)
    assert r.returncode == 0, r.stderr
    assert (repo / "checkpoints/dinov2/dinov2_vitb14_pretrain.pth").read_bytes() == payload


@pytest.mark.parametrize("script, names", [(DIFFUSERS_SCRIPT, "bedroom, cat, church, celebahq"),
                                           (SD_SCRIPT, "sd15, sd21"), (DINOV2_SCRIPT, "vits14, vitb14, vitl14, vitg14")])
@pytest.mark.parametrize("args", [[], ["horse"], ["cat", "extra"]])
def test_model_scripts_print_usage_for_a_bad_name(server, repo, script, names, args):
    r = run(repo, script, *args, base=server.base)
    assert r.returncode == 2 and f"(NAME: {names})" in r.stderr
    assert server.requests == []
