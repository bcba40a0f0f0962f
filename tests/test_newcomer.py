"""What a new user sees on common mistakes: one line naming the real mistake, before any model loads."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_diffusion import read_adapter
from lora_diffusion.cli.main import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def test_a_bad_lora_weight_names_the_weight_not_the_file(tmp_path, capsys):
    lora = tmp_path / "my_style.safetensors"
    lora.write_bytes(b"not read: the spec is checked first")
    assert main(["generate", "x", "--lora", f"{lora}:abc", "--out", str(tmp_path / "o")]) == 2
    assert _error_line(capsys) == (
        f"error: --lora '{lora}:abc': the weight 'abc' is not a number; write FILE:WEIGHT, e.g. {lora}:0.8")


def test_a_missing_lora_file_is_named_before_the_base_loads(tmp_path, capsys, monkeypatch):
    import lora_diffusion.generation.engine as engine

    monkeypatch.setattr(engine, "load_pipeline", lambda *a, **k: pytest.fail("the base was loaded"))
    assert main(["generate", "x", "--lora", "nope.safetensors:0.5", "--out", str(tmp_path)]) == 2
    assert _error_line(capsys) == "error: --lora nope.safetensors: file not found; check the path"


def test_a_missing_data_folder_with_a_slash_is_a_folder_error_not_a_hub_id(tmp_path, capsys, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    monkeypatch.setattr(run_setup, "load_pipeline", lambda *a, **k: pytest.fail("the base was loaded"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "my_imgs/", "--output", "o.safetensors"]) == 2
    assert _error_line(capsys) == "error: data folder not found: my_imgs/; pass --data with a folder of images"


def test_a_misspelled_flag_names_the_command_and_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as code:
        main(["train", "--data", "d", "--ouptut", "o.safetensors"])
    assert code.value.code == 2
    assert _error_line(capsys) == (
        "error: lora-diffusion train: unknown flag --ouptut (did you mean --output?); see 'lora-diffusion train --help'")


def test_a_missing_argument_is_one_line_with_the_commands_help(capsys):
    with pytest.raises(SystemExit):
        main(["generate"])
    assert _error_line(capsys) == (
        "error: lora-diffusion generate: the following arguments are required: PROMPT; "
        "see 'lora-diffusion generate --help'")


@pytest.mark.parametrize("argv, flag", [
    (["generate", "x", "--out", "{blocker}/pngs"], "--out"),
    (["train", "--data", "{data}", "--output", "{blocker}/s.safetensors"], "--output"),
])
def test_an_unusable_output_path_names_the_flag(argv, flag, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder would have to be")
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "0.png")
    (data / "0.txt").write_text("a caption")
    argv = [a.format(blocker=blocker, data=data) for a in argv]
    assert main(argv) == 2
    target = argv[argv.index(flag) + 1]
    problem = f"{blocker} is a file, not a folder" if flag == "--output" else f"cannot create {target} (Not a directory)"
    assert _error_line(capsys) == f"error: {flag} {target}: {problem}; choose a folder you can write to"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("denoising steps (default: the base family's; 20 for SD)",
                     "(CFG) (default: the base family's; 5.0 for SD)", "Karras, UniPC (default: the base family's; DPM++ 2M for SD)",
                     "image width (default: the base's native size, 64 for the built-in base)"):
        assert expected in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--steps STEPS optimizer steps (derived: image passes × images / batch size) "
                     "[default: derived from the base, data and device]",
                     "--seed SEED seed for data order, noise and initialisation [default: 0]",
                     "(adamw/adamw8bit/prodigy/adafactor/adamw-", "schedulefree/lion) [default: adamw]",
                     "(0: none; Ctrl-C still saves one) [default: 0]"):
        assert expected in text, expected


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_adapters_get_the_umask_permissions(umask, mode, tmp_path, sd1):
    from lora_diffusion import LoraConfig, inject_adapter, save_adapter

    inject_adapter(sd1["unet"], "a", LoraConfig(rank=2))
    old = os.umask(umask)
    try:
        path = save_adapter(tmp_path / "a.safetensors", sd1, "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_ctrl_c_message_has_its_own_line_and_resume_warns_about_changed_settings(tmp_path, tiny_base, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (50 * i, 90, 160)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"picture {i}")
    out = tmp_path / "s.safetensors"
    common = [sys.executable, "-m", "lora_diffusion.cli.main", "train", "--base", tiny_base, "--data", str(data),
              "--output", str(out), "--steps", "6", "--batch-size", "2"]
    faulty = [sys.executable, str(Path(__file__).parent / "fault_cli.py"), "ctrl-c-after-step", "3", *common[3:]]
    cut = subprocess.run(faulty + ["--resolution", "32", "--cpu-threads", "1"], capture_output=True, text=True)
    assert cut.returncode == 130, cut.stderr
    last = cut.stderr.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert last == (f"interrupted after step 3 of 6: wrote the partial LoRA {tmp_path / 's-partial-step000003.safetensors'}"
                    f" and the checkpoint {tmp_path / 's-checkpoints' / 'checkpoint-000003'}; continue with --resume latest")
    assert "error" not in cut.stderr
    capsys.readouterr()
    assert main(common[3:] + ["--resolution", "16", "--resume", "latest"]) == 0  # in this process: no start-up
    printed = capsys.readouterr()
    assert ("warning: checkpoint-000003 was made with other settings (resolution 32 → 16); the run goes on with "
            "the new ones: pass the old values to continue it exactly") in printed.err
    assert out.is_file()
    # the bookkeeping of a resumed run: what this run did, the whole loss curve, what was cleaned and what is kept
    assert f"wrote {out} after 6 steps (3 in this run, resumed at step 3) in " in printed.out
    # the resumed steps use the thread count the checkpoint was made with (it changes float rounding)
    assert "cpu_threads = 1, as in checkpoint-000003: the resumed steps round as the first ones did" in printed.err
    assert "removed 1 partial LoRA(s) of the interrupted run(s): s-partial-step000003.safetensors" in printed.out
    assert not (tmp_path / "s-partial-step000003.safetensors").exists()
    assert f"checkpoints kept in {tmp_path / 's-checkpoints'} (" in printed.out
    curve = json.loads(read_adapter(out).metadata["lora_diffusion.loss_curve"])
    assert [step for step, _ in curve] == [1, 2, 3, 4, 5, 6]


def test_sigterm_keeps_the_finished_steps_as_ctrl_c_does_and_exits_143(tmp_path, tiny_base):
    """``timeout``, schedulers and container stops send SIGTERM: the run keeps a checkpoint and a partial LoRA of
    the steps it finished, says where in its last line, and exits 143 (it used to die silently with nothing)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (90 * i, 90, 160)).save(data / f"{i}.png")
    out = tmp_path / "t.safetensors"
    args = ["train", "--base", tiny_base, "--data", str(data), "--caption", "a picture", "--output", str(out),
            "--steps", "6", "--resolution", "16"]
    cut = subprocess.run([sys.executable, str(Path(__file__).parent / "fault_cli.py"), "sigterm-after-step", "2", *args],
                         capture_output=True, text=True)
    assert cut.returncode == 143, cut.stderr
    last = cut.stderr.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert last == (f"interrupted after step 2 of 6: wrote the partial LoRA {tmp_path / 't-partial-step000002.safetensors'}"
                    f" and the checkpoint {tmp_path / 't-checkpoints' / 'checkpoint-000002'}; continue with --resume latest")
    assert (tmp_path / "t-partial-step000002.safetensors").is_file() and not out.exists()


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["generate", "--help"], ["caption", "--help"],
                                  ["train", "--ouptut", "x"],
                                  ["inspect", "no-such.safetensors"]])
def test_help_typos_and_file_checks_answer_without_importing_torch(argv):
    """`--help`, a mistyped flag and a missing file are answered before torch, diffusers or transformers load (they
    took 3 s idle, up to 40 s on a busy machine)."""
    probe = ("import sys\nfrom lora_diffusion.cli.main import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "LOADED []", done.stdout + done.stderr


def test_every_flag_of_every_command_has_a_help_text_and_ui_shows_its_defaults():
    import argparse

    from lora_diffusion.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[-1]}" for name, sub in commands.items() for action in sub._actions
              if action.option_strings and action.help in (None, "")]
    assert silent == []
    ui_help = commands["ui"].format_help()
    assert "(default: 127.0.0.1)" in ui_help and "(default: 7860)" in ui_help and "(default: loras)" in ui_help
    assert "(default: quickstart-output)" in commands["quickstart"].format_help()


def test_the_quickstart_comparison_shows_a_progress_bar_per_weight(capsys):
    """The quickstart's generation phase (10 s to 2 min per weight on a CPU) shows its progress, one bar per row."""
    import torch as _torch

    from lora_diffusion import LoraConfig, inject_adapter
    from lora_diffusion.cli.quickstart_cmd import comparison_rows
    from lora_diffusion.models.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    inject_adapter(pipe.unet, "x", LoraConfig(rank=2))
    with _torch.no_grad():
        drawn = comparison_rows(pipe, pipe.unet, "x", ["a red circle", "a blue square"], (0.0, 1.0), 32)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert sorted(drawn) == [0.0, 1.0] and len(drawn[1.0]) == 2
    assert "weight 0.0: 100%" in err and "weight 1.0: 100%" in err and "20/20" in err


def test_a_lora_trained_without_a_trigger_word_names_the_words_its_captions_share(tmp_path, tiny_base):
    """Every caption ends in "in mystyle": the file says so (``lora_diffusion.trigger_words`` and kohya's
    ``ss_tag_frequency``), and the Library shows it as the trigger word."""
    from lora_diffusion.ui.library import trigger_words

    data = tmp_path / "data"
    data.mkdir()
    for i, scene in enumerate(["a red circle on white", "a blue square on black", "two green bars"]):
        Image.new("RGB", (16, 16), (80 * i, 90, 160)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"{scene} in mystyle")
    out = tmp_path / "m.safetensors"
    assert main(["train", "--base", tiny_base, "--data", str(data), "--output", str(out), "--steps", "1",
                 "--resolution", "16"]) == 0
    metadata = read_adapter(out).metadata
    assert json.loads(metadata["lora_diffusion.trigger_words"]) == ["mystyle"]
    assert json.loads(metadata["ss_tag_frequency"]) == {"data": {"a blue square on black in mystyle": 1,
                                                                 "a red circle on white in mystyle": 1,
                                                                 "two green bars in mystyle": 1}}
    assert trigger_words({"metadata": metadata}) == ["mystyle"]
