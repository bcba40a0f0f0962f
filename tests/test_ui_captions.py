"""The Train tab's caption grid (issue 34): caption an upload or a server folder, edit the grid, save it beside the
images; rows a page invents are refused."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lora_diffusion import UserError
from lora_diffusion.ui import jobs
from lora_diffusion.ui.app import UiState, _grid_rows
from lora_diffusion.ui.captions import bulk_edit


class FakeCaptioner:
    device = torch.device("cpu")

    def caption(self, images, detail):
        return [f"a {detail} caption of a {im.width} px image" for im in images]


@pytest.fixture
def state(tmp_path, monkeypatch):
    import lora_diffusion.data.captioner as captioner

    monkeypatch.setattr(captioner, "load_captioner", lambda model, *a, **k: FakeCaptioner())
    monkeypatch.setattr(jobs.TrainingJob, "_run", lambda self, cfg, final: None)
    return UiState(str(tmp_path / "loras"), out_dir=str(tmp_path / "out"), device="cpu")


@pytest.fixture
def uploads(tmp_path):
    folder = tmp_path / "up"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (24 + i, 24), (40 * i, 90, 160)).save(folder / f"{i}.png")
    (folder / "1.txt").write_text("mine\n")
    return [SimpleNamespace(name=str(folder / name)) for name in ("0.png", "1.png", "1.txt", "2.png")]


def test_uploads_are_captioned_edited_and_saved_beside_the_images_the_run_trains_on(state, uploads):
    folder, rows, status = state.caption_grid(uploads, "", "builtin", caption_now=True)
    assert rows == [["0.png", "a short caption of a 24 px image"], ["1.png", "mine"],
                    ["2.png", "a short caption of a 26 px image"]]
    assert status.startswith("2 captions written; 3 images")
    rows = bulk_edit(rows, "caption", "drawing", "sks")
    assert rows[0] == ["0.png", "sks, a short drawing of a 24 px image"] and rows[1] == ["1.png", "sks, mine"]
    rows[2][1] = "  my   edit  "  # a cell edited on the page
    assert state.save_caption_grid(folder, rows) == f"saved 3 captions in {folder.split('/')[-1]}"
    assert (state.caption_dir / folder.split("/")[-1] / "2.txt").read_text() == "my edit\n"
    again, reloaded, _ = state.caption_grid(None, folder, "builtin", caption_now=False)
    assert again == folder and reloaded[0] == ["0.png", "sks, a short drawing of a 24 px image"]
    # the run trains on that folder, with the edited captions
    state.start_training("mine", None, folder, "", "", False, "builtin",
                         **{"rank": "auto", "alpha": "auto", "steps": "auto", "lr": "auto", "resolution": "auto"})
    state.job.wait()


def test_rows_a_page_invents_are_refused(state, uploads, tmp_path):
    folder, rows, _ = state.caption_grid(uploads, "", "builtin", caption_now=False)
    for name in ("../../etc/passwd", "3.png", "1.txt"):
        with pytest.raises(UserError, match="is not an image of this folder; reload the grid"):
            state.save_caption_grid(folder, [[name, "x"]])
    with pytest.raises(UserError, match="load a folder into the caption grid first"):
        state.save_caption_grid("", rows)
    assert _grid_rows([["0.png", None], ["", "x"]]) == [["0.png", ""]]


def test_a_confined_server_captions_only_its_data_dir_and_its_own_uploads(tmp_path, uploads, monkeypatch):
    import lora_diffusion.data.captioner as captioner

    monkeypatch.setattr(captioner, "load_captioner", lambda model, *a, **k: FakeCaptioner())
    data = tmp_path / "data"
    data.mkdir()
    ui = UiState(str(tmp_path / "loras"), out_dir=str(tmp_path / "out"), device="cpu", confine_paths=True,
                 data_dir=str(data))
    with pytest.raises(UserError, match="is not offered by this server"):
        ui.caption_grid(None, str(tmp_path / "up"), "builtin", caption_now=True)
    folder, rows, _ = ui.caption_grid(uploads, "", "builtin", caption_now=False)  # its own upload: allowed
    assert len(rows) == 3 and ui.save_caption_grid(folder, rows).startswith("saved 3")
