"""The demo model: its dataset, its scorer, its training loop and its shipped weights."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from django.core.management import call_command

from generation.demo_model import WEIGHTS_DIR, dataset, scoring
from generation.demo_model.sampling import generate
from generation.demo_model.tokenizer import build_tokenizer
from generation.engine import DEFAULT_GUIDANCE, DEFAULT_STEPS

# The demo model's own tests (training, scoring, its shipped weights) run it: `make test`
# only, as tests/conftest.py keeps the demo model out of `make test-fast`.
pytestmark = pytest.mark.slow

def test_dataset_is_deterministic():
    first, first_triples = dataset.examples(8)
    again, again_triples = dataset.examples(8)
    assert np.array_equal(first, again)
    assert first_triples == again_triples
    assert first.shape == (8, 64, 64, 3)


def test_held_out_triples_are_a_tenth_and_never_trained_on():
    assert len(dataset.ALL_TRIPLES) == 8 * 7 * 3
    assert len(dataset.HELD_OUT) == 17
    assert not set(dataset.HELD_OUT) & set(dataset.TRAIN_TRIPLES)
    _, triples = dataset.examples(500)
    assert not set(triples) & set(dataset.HELD_OUT)


def test_captions_are_single_tokens_per_word():
    tokenizer = build_tokenizer()
    caption = dataset.HELD_OUT[0].caption
    ids = tokenizer(caption).input_ids
    assert len(ids) == len(caption.split()) + 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == caption


def test_scorer_reads_ground_truth_images():
    images, triples = dataset.examples(400, dataset.ALL_TRIPLES)
    scores = [scoring.score(image, triple) for image, triple in zip(images, triples, strict=True)]
    assert np.mean([s.all_three for s in scores]) >= 0.99


def test_scorer_reports_a_wrong_shape_colour():
    image, triple = dataset.example(0)
    wrong = dataset.Triple(
        next(c for c in dataset.COLOURS if c not in (triple.colour, triple.background)),
        triple.shape,
        triple.background,
    )
    result = scoring.score(image, wrong)
    assert result.background and result.shape and not result.colour


def _run_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_training_runs_and_resumes_from_a_checkpoint(tmp_path):
    options = {"size": "tiny", "images": 64, "vae_steps": 2}
    call_command("train_demo_model", out=tmp_path, unet_steps=2, **options)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2

    call_command("train_demo_model", out=tmp_path, unet_steps=4, resume=True, **options)

    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    assert {"phase": "unet", "resumed_at": 2} in _run_log(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    assert generate(pipe, ["a red circle"], seed=0, guidance=1.0, steps=2).shape == (1, 64, 64, 3)


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "model_index.json").exists(), reason="demo weights not trained yet"
)
def test_shipped_weights_load_offline_in_a_stock_pipeline_and_follow_prompts():
    pipe = StableDiffusionPipeline.from_pretrained(WEIGHTS_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    triples = list(dataset.TRAIN_TRIPLES[::40])
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(triples))]
    # No scheduler given: the saved scheduler config must sample well on its own.
    images = pipe(
        [t.caption for t in triples],
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        generator=generators,
        output_type="np",
    ).images
    images = np.rint(images * 255).astype(np.uint8)
    assert images.shape == (len(triples), 64, 64, 3)
    right = [scoring.score(i, t).all_three for i, t in zip(images, triples, strict=True)]
    assert sum(right) >= len(triples) - 1
