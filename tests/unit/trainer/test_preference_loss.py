"""The preference losses on hand-made log-probabilities: what each loss rewards, and the
figures a run reports."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune.api.enums import PreferenceLoss
from kubetune_trainer.data.tokenize import IGNORE_INDEX
from kubetune_trainer.preference import Scores, dpo_outcome, figures, orpo_outcome, sequence_scores


def _scores(chosen: list[float], rejected: list[float], tokens: float = 4.0) -> Scores:
    count = torch.full((len(chosen),), tokens)
    return Scores(torch.tensor(chosen), torch.tensor(rejected), count, count.clone())


def test_sequence_scores_sum_each_answers_labelled_log_probabilities() -> None:
    logits = torch.randn(1, 6, 5)
    # Two sequences in one row: ids 1 2 3 (sequence 0) and 4 0 (sequence 1), then padding.
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 0, IGNORE_INDEX]])
    owners = torch.tensor([[0, 0, 0, 1, 1, -1]])

    scores = sequence_scores(logits, labels, owners)

    logp = logits.log_softmax(-1)
    assert scores.chosen.item() == pytest.approx((logp[0, 0, 2] + logp[0, 1, 3]).item(), abs=1e-5)
    assert scores.rejected.item() == pytest.approx(logp[0, 3, 0].item(), abs=1e-5)
    assert (scores.chosen_tokens.item(), scores.rejected_tokens.item()) == (2, 1)


def test_dpo_sigmoid_is_log_2_when_the_model_is_its_reference_and_falls_as_chosen_gains() -> None:
    reference = _scores([-10.0, -12.0], [-11.0, -9.0])

    same = dpo_outcome(reference, reference, beta=0.1, loss=PreferenceLoss.SIGMOID)
    better = dpo_outcome(_scores([-8.0, -10.0], [-13.0, -11.0]), reference, beta=0.1, loss=PreferenceLoss.SIGMOID)

    assert same.losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert figures(same, reference)["reward_accuracy"] == [0.5, 0.5]  # a tie counts half
    assert better.losses.max() < math.log(2)
    assert figures(better, reference)["reward_accuracy"] == [1.0, 1.0]
    assert figures(better, reference)["reward_margin"] == pytest.approx([0.4, 0.4])


def test_dpo_hinge_stops_pushing_once_the_margin_reaches_one_over_beta() -> None:
    reference = _scores([-10.0], [-10.0])

    far = dpo_outcome(_scores([-5.0], [-20.0]), reference, beta=0.1, loss=PreferenceLoss.HINGE)
    near = dpo_outcome(_scores([-9.0], [-10.0]), reference, beta=0.1, loss=PreferenceLoss.HINGE)

    assert far.losses.item() == 0.0
    assert near.losses.item() == pytest.approx(0.9)


def test_ipo_aims_the_per_token_margin_at_one_over_two_beta() -> None:
    reference = _scores([-8.0], [-8.0], tokens=4.0)

    on_target = dpo_outcome(_scores([-8.0 + 4 * 2.5], [-8.0]), reference, beta=0.2, loss=PreferenceLoss.IPO)
    beyond = dpo_outcome(_scores([-8.0 + 4 * 5.0], [-8.0]), reference, beta=0.2, loss=PreferenceLoss.IPO)

    assert on_target.losses.item() == pytest.approx(0.0)
    assert beyond.losses.item() == pytest.approx(2.5**2)


def test_orpo_adds_the_chosen_likelihood_to_the_odds_ratio_and_rewards_mean_log_probabilities() -> None:
    prefers_chosen = orpo_outcome(_scores([-2.0], [-8.0]), beta=0.1)
    prefers_rejected = orpo_outcome(_scores([-8.0], [-2.0]), beta=0.1)

    assert prefers_chosen.losses.item() < prefers_rejected.losses.item()
    assert prefers_chosen.losses.item() > 0.5  # the chosen answer's per-token NLL, 2 / 4
    assert prefers_chosen.chosen_rewards.item() == pytest.approx(0.1 * -0.5)
    assert torch.isfinite(orpo_outcome(_scores([0.0], [-1.0]), beta=0.1).losses).all()


@pytest.mark.parametrize("tied", [False, True], ids=["own-head", "tied-head"])
def test_a_reference_copy_under_autocast_scores_exactly_as_its_policy(tied: bool) -> None:
    """The untrained policy ties every pair with its reference (reward accuracy 0.5, margin 0)
    although the reference keeps its linear layers in bf16 and the policy in fp32."""
    import copy

    from transformers import AutoConfig, AutoModelForCausalLM

    from kubetune_trainer.preference import linear_layers_to

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, pad_token_id=0,
    )  # fmt: skip
    policy = AutoModelForCausalLM.from_config(config).eval()
    reference = copy.deepcopy(policy)
    linear_layers_to(reference, torch.bfloat16)
    ids = torch.randint(1, 300, (2, 24))

    dtypes = {name: p.dtype for name, p in reference.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["model.norm.weight"] == dtypes["model.embed_tokens.weight"] == torch.float32
    assert reference.lm_head.weight.dtype == (torch.float32 if tied else torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = policy(input_ids=ids).logits, reference(input_ids=ids).logits
    assert torch.equal(expected, got)
