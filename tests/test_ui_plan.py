"""The Train tab trains with the plan: its fields default to auto, it shows the plan before a run starts, and a
page-started run derives exactly what `lora-diffusion train` derives on the same data."""

import pytest
from PIL import Image

from lora_diffusion import UserError
from lora_diffusion.cli.main import build_parser
from lora_diffusion.cli.train_cmd import config_from_args
from lora_diffusion.training.config import DERIVED
from lora_diffusion.training.plan_preview import preview_plan
from lora_diffusion.ui import jobs
from lora_diffusion.ui.app import MORE_TRAIN_FIELDS, TRAIN_FIELDS, UiState

AUTO = {key: "auto" for key in TRAIN_FIELDS} | {key: default for key, (_, default) in MORE_TRAIN_FIELDS.items()}


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square {i}")
    return folder


@pytest.fixture
def state(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(jobs.TrainingJob, "_run", lambda self, cfg, final: started.append(cfg))
    ui = UiState(str(tmp_path / "loras"), out_dir=str(tmp_path / "out"), device="cpu")
    ui.started = started
    return ui


def test_a_page_started_run_derives_what_the_cli_derives(state, data, tmp_path):
    status, shown = state.start_training("mine", None, str(data), "", "", False, "builtin",
                                         **(AUTO | {"alpha": ""}))
    state.job.wait()
    page = state.started[0]
    cli = config_from_args(build_parser().parse_args(
        ["train", "--base", "builtin", "--data", str(data), "--output", str(tmp_path / "cli.safetensors")]))
    page_plan, page_text = preview_plan(page)
    cli_plan, cli_text = preview_plan(cli)
    assert {k: getattr(page_plan.config, k) for k in DERIVED} == {k: getattr(cli_plan.config, k) for k in DERIVED}
    assert page_plan.reasons == cli_plan.reasons and page_plan.explicit == cli_plan.explicit == []
    assert shown == page_text == cli_text and shown.startswith("plan: profile builtin (profiles/builtin.yaml), 6 images")
    # the page's own choice: four validation grids over the derived steps
    assert page.sample_every == page_plan.config.steps // 4 and page_plan.config.steps == 200
    assert "mine" in status and "step 0 / 200" in status


def test_the_plan_is_shown_before_starting_and_names_what_the_user_set(state, data):
    text = state.preview_training("mine", None, str(data), "", "", False, "builtin", **(AUTO | {"rank": "16"}))
    assert "  alpha = 16  (profile builtin's alpha/rank scale)" in text
    assert text.splitlines()[-1] == "  set by you: rank = 16"
    assert state.started == [] and state.job.snapshot().status == "idle"


def test_a_wrong_field_is_one_line_naming_it(state, data):
    with pytest.raises(UserError, match="^Train tab: key 'steps' must be an integer"):
        state.start_training("mine", None, str(data), "", "", False, "builtin", **(AUTO | {"steps": "many"}))
    assert state.started == []


def test_the_cli_prints_the_plan_the_preview_showed(data, tmp_path):
    from lora_diffusion.training.callbacks import TrainCallbacks
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    heard = []

    class Enough(Exception):
        pass

    def on_plan(plan, text):
        heard.append(text)
        raise Enough  # the plan is all this test needs: no step runs

    cfg = TrainConfig(base="builtin", data=str(data), output=str(tmp_path / "a.safetensors"))
    with pytest.raises(Enough):
        train(cfg, progress=False, callbacks=TrainCallbacks(on_plan=on_plan))
    assert heard == [preview_plan(cfg)[1]]


def test_more_settings_reach_the_run_and_their_defaults_are_the_clis(state, data, tmp_path):
    """EMA, the optimizer and the validation split (issue 33) on the page: the run gets them; left as shown,
    the run is the CLI's."""
    state.start_training("mine", None, str(data), "", "", False, "builtin",
                         **(AUTO | {"optimizer": "prodigy", "ema_decay": "0.99", "validation_split": "0.2"}))
    state.job.wait()
    cfg = state.started[0]
    assert (cfg.optimizer, cfg.ema_decay, cfg.validation_split) == ("prodigy", 0.99, 0.2)
    assert preview_plan(cfg)[0].config.lr == 1.0  # Prodigy's own scale, derived as the CLI does
    cli = config_from_args(build_parser().parse_args(
        ["train", "--data", str(data), "--output", str(tmp_path / "cli.safetensors")]))
    prompts = "a cat --w 48 --d 3\nthe same cat --n dog"
    state.start_training("theirs", None, str(data), "", "", False, "builtin", **(AUTO | {"sample_prompts": prompts}))
    state.job.wait()
    assert open(state.started[1].sample_prompts).read() == prompts + "\n"  # the file the trainer reads
    with pytest.raises(UserError, match=r"^sample prompts: at most 8 lines, --s 100 steps and 2048 px a side"):
        state.start_training("big", None, str(data), "", "", False, "builtin",
                             **(AUTO | {"sample_prompts": "a cat --w 4096 --s 1000"}))
    assert {key: getattr(cli, key) for key in MORE_TRAIN_FIELDS} == {
        key: type(getattr(cli, key))(default) for key, (_, default) in MORE_TRAIN_FIELDS.items()}


def test_a_dataset_config_on_the_server_trains_with_its_subsets(state, data, tmp_path):
    config = tmp_path / "dataset.yaml"
    config.write_text(f"subsets:\n  - folder: {data}\n    repeats: 2\n")
    shown = state.preview_training("mine", None, "", "", "", False, "builtin", **(AUTO | {"dataset_config": str(config)}))
    assert shown.startswith("plan: profile builtin (profiles/builtin.yaml), 12 images")  # 6 images × 2 repeats


def test_a_confined_server_reads_no_dataset_config_outside_its_data_dir(tmp_path, data, monkeypatch):
    monkeypatch.setattr(jobs.TrainingJob, "_run", lambda self, cfg, final: None)
    ui = UiState(str(tmp_path / "loras"), out_dir=str(tmp_path / "out"), device="cpu", confine_paths=True,
                 data_dir=str(data))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "dataset.yaml").write_text(f"subsets:\n  - folder: {data}\n")
    with pytest.raises(UserError, match="is not offered by this server"):
        ui.start_training("x", None, "", "", "", False, "builtin", **(AUTO | {"dataset_config": str(outside / "dataset.yaml")}))
    inside = data / "dataset.yaml"
    inside.write_text(f"subsets:\n  - folder: {outside}\n")  # inside, but naming a folder outside
    with pytest.raises(UserError, match="is not offered by this server"):
        ui.start_training("x", None, "", "", "", False, "builtin", **(AUTO | {"dataset_config": str(inside)}))
