"""The weights catalogue and its download cache, served from a local HTTP server: never the network."""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

import train
from spermfuse.core.checkpoints import read_safetensors
from spermfuse.core.errors import ConfigError
from spermfuse.core.files import CheckpointError
from spermfuse.core.models import create_model
from spermfuse.core.models.weights import WeightsError
from spermfuse.store.catalogue import find_entry, load_catalogue
from spermfuse.store.download import DownloadError
from spermfuse.store.pretrained import create_pretrained_model


class Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; a path starting with /truncated/ announces the whole file but sends half."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/truncated/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """(served folder, base URL, stop()); the cache and the catalogue file live in tmp_path."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Mirror(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SPERMFUSE_CACHE", str(tmp_path / "cache"))
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield served, f"http://127.0.0.1:{server.server_address[1]}", stop
    stop()


def use_catalogue(tmp_path, monkeypatch, entries: dict) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("SPERMFUSE_WEIGHTS_CATALOGUE", str(path))


def served_weights(served: Path, name: str = "lab.pth") -> tuple[dict, str]:
    """A resnetv2_tiny state dict written to the mirror; (state, its SHA-256)."""
    torch.manual_seed(1)
    state = create_model("resnetv2_tiny", 3).state_dict()
    torch.save(state, served / name)
    return state, hashlib.sha256((served / name).read_bytes()).hexdigest()


def lab_entry(url: str, **fields) -> dict:
    return {
        "resnetv2_tiny": {"lab": {"url": url, "format": "pytorch", "layout": "state dict", "default": True, **fields}}
    }


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_fresh_download_loads_the_served_weights_and_records_their_digest(tmp_path, monkeypatch, mirror):
    served, base, _ = mirror
    state, digest = served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth"))
    model = create_pretrained_model("resnetv2_tiny", 3, True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert cached_files(tmp_path) == ["resnetv2_tiny-lab.pth", "resnetv2_tiny-lab.pth.sha256"]
    assert (tmp_path / "cache" / "weights" / "resnetv2_tiny-lab.pth.sha256").read_text().split()[0] == digest


def test_the_cached_file_is_used_with_the_server_stopped(tmp_path, monkeypatch, mirror):
    served, base, stop = mirror
    state, _ = served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth"))
    create_pretrained_model("resnetv2_tiny", 3, "lab")
    stop()
    model = create_pretrained_model("resnetv2_tiny", 3, "lab")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_offline_without_a_cached_file_names_the_url_and_the_local_alternative(tmp_path, monkeypatch, mirror):
    served, base, stop = mirror
    served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth"))
    stop()
    with pytest.raises(DownloadError, match=f"could not download {base}/lab.pth .*--weights PATH"):
        create_pretrained_model("resnetv2_tiny", 3, True)
    assert cached_files(tmp_path) == []


def test_a_truncated_download_leaves_no_file_behind(tmp_path, monkeypatch, mirror):
    served, base, _ = mirror
    served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/truncated/lab.pth"))
    with pytest.raises(DownloadError, match="ended after"):
        create_pretrained_model("resnetv2_tiny", 3, True)
    assert cached_files(tmp_path) == []  # neither the file, its digest record, nor a .part


def test_a_wrong_catalogue_digest_is_refused_and_nothing_kept(tmp_path, monkeypatch, mirror):
    served, base, _ = mirror
    _, digest = served_weights(served)
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth", sha256=wrong))
    with pytest.raises(DownloadError, match="differs from the catalogue's"):
        create_pretrained_model("resnetv2_tiny", 3, True)
    assert cached_files(tmp_path) == []


def test_a_matching_digest_prefix_is_accepted_as_torch_hub_file_names_give_it(tmp_path, monkeypatch, mirror):
    served, base, _ = mirror
    _, digest = served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth", sha256=digest[:8]))
    create_pretrained_model("resnetv2_tiny", 3, True)
    assert cached_files(tmp_path) == ["resnetv2_tiny-lab.pth"]  # a known digest needs no record


@pytest.mark.parametrize("catalogue_digest", [False, True])
def test_a_corrupted_cached_file_is_refused_not_reloaded(tmp_path, monkeypatch, mirror, catalogue_digest):
    served, base, _ = mirror
    _, digest = served_weights(served)
    use_catalogue(
        tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth", **({"sha256": digest} if catalogue_digest else {}))
    )
    create_pretrained_model("resnetv2_tiny", 3, True)
    cached = tmp_path / "cache" / "weights" / "resnetv2_tiny-lab.pth"
    data = bytearray(cached.read_bytes())
    data[-100] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(
        DownloadError, match="resnetv2_tiny-lab.pth: SHA-256 .* differs .*delete .*resnetv2_tiny-lab.pth"
    ):
        create_pretrained_model("resnetv2_tiny", 3, True)


def test_an_unwritable_cache_names_the_folder_and_the_variable(tmp_path, monkeypatch, mirror):
    served, base, _ = mirror
    served_weights(served)
    use_catalogue(tmp_path, monkeypatch, lab_entry(f"{base}/lab.pth"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPERMFUSE_CACHE", str(blocker / "cache"))
    with pytest.raises(
        DownloadError, match=r"a_file/cache/weights: the weights cache is not writable .*\$SPERMFUSE_CACHE"
    ):
        create_pretrained_model("resnetv2_tiny", 3, True)


def test_a_file_whose_tensors_do_not_fit_names_the_first_mismatching_key(tmp_path):
    state = create_model("resnetv2_tiny", 3).state_dict()
    state["stem.conv.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(
        WeightsError, match=r"stem\.conv\.weight has shape \(8, 3, 7, 7\) in the file but \(16, 3, 7, 7\)"
    ):
        create_model("resnetv2_tiny", 3, weights=tmp_path / "narrow.pth")


def test_an_unknown_tag_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="--pretrained nope: not a checkpoint of efficientnetv2_s; choose one of tf_in21k_ft_in1k, "
    ):
        find_entry("efficientnetv2_s", "nope")


def test_the_defaults_are_the_papers_checkpoints():
    assert find_entry("efficientnetv2_s").url.endswith("tf_efficientnetv2_s_21ft1k-d7dafa41.pth")
    assert find_entry("efficientnetv2_s").padding == "same"
    assert "goog_distilled_in1k" in find_entry("resnet50v2").url
    assert find_entry("efficientnet_b4").url.endswith("tf_efficientnet_b4-74ee3bed.pth")


def test_a_mirror_entry_changes_only_the_fields_it_gives(tmp_path, monkeypatch):
    use_catalogue(
        tmp_path, monkeypatch, {"efficientnetv2_s": {"tf_in21k_ft_in1k": {"url": "http://mirror.lab/v2s.pth"}}}
    )
    built_in, mirrored = find_entry("efficientnetv2_s", catalogue=load_catalogue({})), find_entry("efficientnetv2_s")
    assert mirrored.url == "http://mirror.lab/v2s.pth"
    assert (mirrored.sha256, mirrored.padding, mirrored.mean) == (built_in.sha256, built_in.padding, built_in.mean)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"resnetv2_tiny": {"new": {"url": "http://x/y.pth"}}}, "a new tag needs format, layout"),
        ({"resnet99": {"x": {}}}, "unknown architecture 'resnet99'"),
        ({"resnet50v2": {"bit_m_in21k": {"md5": "00"}}}, r"unknown field\(s\) md5"),
        ({"resnet50v2": {"bit_m_in21k": {"format": "zip"}}}, "format 'zip' is not one of"),
    ],
)
def test_a_bad_catalogue_file_is_refused_naming_the_variable(tmp_path, monkeypatch, entries, message):
    use_catalogue(tmp_path, monkeypatch, entries)
    with pytest.raises(ConfigError, match=r"\$SPERMFUSE_WEIGHTS_CATALOGUE=.*" + message):
        load_catalogue()


def test_list_weights_prints_the_catalogue_with_a_mirrors_entries(tmp_path, monkeypatch, capsys):
    use_catalogue(tmp_path, monkeypatch, lab_entry("http://mirror.lab/tiny.pth"))
    assert train.main(["--list-weights"]) == 0
    printed = capsys.readouterr().out
    assert "tf_in21k_ft_in1k (default)" in printed and "http://mirror.lab/tiny.pth" in printed


def test_train_py_refuses_an_unknown_tag_in_one_line(capsys):
    assert train.main(["--arch", "resnet50v2", "--pretrained", "imagenet", "--preset", "tiny"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--pretrained imagenet: not a checkpoint of resnet50v2" in error


# --------------------------------------------------------------------------- safetensors


def test_safetensors_files_read_as_the_reference_library_writes_them(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "half": torch.randn(5).half(),
        "brain": torch.randn(2, 3).bfloat16(),
        "steps": torch.arange(7),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    read = read_safetensors(tmp_path / "model.safetensors")
    assert read.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name


def test_a_truncated_safetensors_file_is_refused(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({"w": torch.randn(64, 64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="cut.safetensors: .*'w' do not fit its shape"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_safetensors_weights_load_through_the_timm_names(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10)
    safetensors_torch.save_file(reference.state_dict(), tmp_path / "model.safetensors")
    ours = create_model("resnet50v2", 18, weights=tmp_path / "model.safetensors")
    assert torch.equal(ours.stem.conv.weight, reference.stem.conv.weight)
    assert torch.equal(ours.stages[3][2].conv3.weight, reference.stages[3].blocks[2].conv3.weight)


def test_pretrained_and_a_local_file_together_are_refused_before_any_download(capsys):
    assert train.main(["--arch", "resnet50v2", "--pretrained", "--weights", "x.pth", "--preset", "tiny"]) == 2
    assert capsys.readouterr().err.strip() == "error: give either --pretrained or --weights PATH, not both"


def test_a_spermfuse_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    from spermfuse.core.models import create_model
    from spermfuse.core.models.weights import WeightsError
    from spermfuse.store.pretrained import load_initial_weights

    path = tmp_path / "best.pt"
    state = create_model("efficientnet_tiny", 3).state_dict()
    torch.save({"model": state, "pipeline": {"mean": [0.5] * 3, "std": [0.5] * 3}, "arch": "efficientnet_tiny"}, path)
    with pytest.raises(
        WeightsError,
        match="a spermfuse checkpoint of efficientnet_tiny, not resnetv2_tiny; give --arch efficientnet_tiny",
    ):
        load_initial_weights(create_model("resnetv2_tiny", 3), "resnetv2_tiny", weights=str(path))
