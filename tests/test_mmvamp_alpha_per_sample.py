"""MM-VAMP's α annealing counted in training samples (option alpha_anneal_batch): the same α per epoch at any
batch size as the authors' runs at theirs."""
import pytest
import torch

from mmbench.data.base import Modality
from mmbench.errors import MMBenchError
from mmbench.methods.base import MethodConfig
from mmbench.methods.mmvamp import annealed_alpha
from mmbench.registry import METHODS

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(2)]


def make(**options):
    torch.manual_seed(0)
    return METHODS.get("mmvamp")(MODS, MethodConfig("mmvamp", latent_dim=4, beta=1.0, options=options), "polymnist_cnn")


def epoch(model, batch, n=16):
    """One 'epoch' of n rows in batches of `batch` rows (loss only: the counters advance in training mode)."""
    x = {m.name: torch.rand(batch, 3, 28, 28) for m in MODS}
    for _ in range(n // batch):
        model.loss(x)


def test_alpha_after_an_epoch_does_not_depend_on_the_batch_size():
    small = make(alpha=1.0, alpha_anneal_steps=8, alpha_anneal_batch=2)
    large = make(alpha=1.0, alpha_anneal_steps=8, alpha_anneal_batch=2)
    epoch(small, 2)  # 8 steps of 2 rows: the schedule's 8 steps
    epoch(large, 4)  # 4 steps of 4 rows: the same 16 samples
    assert int(small.train_steps) == 8 and int(large.train_steps) == 4
    assert small.alpha() == pytest.approx(large.alpha()) == pytest.approx(annealed_alpha(1.0, 8, 8))
    # Counted in own steps (the default), the larger batch would be only half way.
    plain = make(alpha=1.0, alpha_anneal_steps=8)
    epoch(plain, 4)
    assert plain.alpha() == pytest.approx(annealed_alpha(1.0, 8, 4)) and plain.alpha() > 100 * large.alpha()


def test_sample_counter_is_checkpointed_and_old_checkpoints_load():
    model = make(alpha=1.0, alpha_anneal_steps=8, alpha_anneal_batch=2)
    epoch(model, 4, n=8)
    state = model.state_dict()
    assert int(state["train_samples"]) == 8
    fresh = make(alpha=1.0, alpha_anneal_steps=8, alpha_anneal_batch=2)
    fresh.load_state_dict(state)
    assert fresh.alpha() == pytest.approx(model.alpha())
    old = {k: v for k, v in state.items() if k != "train_samples"}  # written before the counter existed
    make().load_state_dict(old)


def test_alpha_anneal_batch_is_validated():
    with pytest.raises(MMBenchError, match="alpha_anneal_batch"):
        make(alpha_anneal_batch=-1)
