"""``--ema-decay``: the adapter files hold an exponential moving average of the LoRA weights, training itself is
unchanged, and a killed run resumes the average bit for bit."""

import torch
from safetensors.torch import load_file

from conftest import assert_kill_and_resume_is_bit_identical
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.ema import LoraEma
from lora_diffusion.training.trainer import train


def test_the_average_moves_toward_the_weights_and_is_only_applied_while_a_file_is_written():
    w = torch.nn.Parameter(torch.tensor([0.0, 4.0]))
    ema = LoraEma([w], decay=0.75)
    with torch.no_grad():
        w.copy_(torch.tensor([4.0, 0.0]))
    ema.update()
    assert torch.equal(ema.shadow[0], torch.tensor([1.0, 3.0]))  # 0.75·old + 0.25·new
    with ema.applied():
        assert torch.equal(w.detach(), torch.tensor([1.0, 3.0]))
    assert torch.equal(w.detach(), torch.tensor([4.0, 0.0]))
    again = LoraEma([w], decay=0.75)
    again.load(ema.state())
    assert torch.equal(again.shadow[0], ema.shadow[0])


def test_a_run_with_ema_trains_the_same_and_writes_the_average_of_its_weights(tiny_base, squares, tmp_path,
                                                                              monkeypatch):
    common = dict(base=tiny_base, data=squares, resolution=32, steps=4, batch_size=2, lr=5e-3, seed=4,
                  save_dtype="fp32")
    snapshots = []
    update = LoraEma.update

    def recorded(self):
        if not snapshots:
            snapshots.append([t.clone().double() for t in self.shadow])  # the average starts at the initial weights
        snapshots.append([p.detach().clone().double() for p in self.params])
        update(self)

    monkeypatch.setattr(LoraEma, "update", recorded)
    plain = train(TrainConfig(output=str(tmp_path / "plain.safetensors"), **common), progress=False)
    averaged = train(TrainConfig(output=str(tmp_path / "ema.safetensors"), ema_decay=0.5, **common), progress=False)
    assert averaged.losses == plain.losses  # the average never feeds back into training
    assert len(snapshots) == 1 + 4
    expected = snapshots[0]
    for weights in snapshots[1:]:
        expected = [e + 0.5 * (w - e) for e, w in zip(expected, weights)]
    raw = [t.double() for t in snapshots[-1]]
    plain_file, ema_file = load_file(str(tmp_path / "plain.safetensors")), load_file(str(tmp_path / "ema.safetensors"))
    assert plain_file.keys() == ema_file.keys()
    # the plain file holds the raw weights, the EMA file their average: compare as sets of values
    def sums(tensors):
        return torch.tensor(sorted(float(t.double().abs().sum()) for t in tensors if t.dim() > 0), dtype=torch.float64)

    torch.testing.assert_close(sums(ema_file.values()), sums(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sums(plain_file.values()), sums(raw), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(sums(ema_file.values()), sums(plain_file.values()), rtol=1e-3)


def test_a_killed_run_with_ema_resumes_bit_identical(tiny_base, squares, tmp_path):
    assert_kill_and_resume_is_bit_identical(
        ["--base", tiny_base, "--data", squares, "--resolution", "32", "--steps", "6", "--batch-size", "2",
         "--lr", "5e-3", "--seed", "4", "--checkpoint-every", "3", "--ema-decay", "0.8", "--quiet"], tmp_path)
