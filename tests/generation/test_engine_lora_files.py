"""LoRA files are told apart by layout and by the text width they were trained for, and hashed
as AUTOMATIC1111 hashes them, all from their headers and bytes."""

import hashlib

import numpy as np
import pytest
from safetensors.numpy import save_file

from generation.engine.families import ModelLoadError
from generation.engine.loras import a1111_hash, inspect_lora, mismatch

RANK = 4


def kohya(width: int) -> dict[str, np.ndarray]:
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    return {
        f"{block}.lora_down.weight": np.full((RANK, width), 0.5, np.float16),
        f"{block}.lora_up.weight": np.full((32, RANK), 0.25, np.float16),
        f"{block}.alpha": np.array(RANK, np.float16),
    }


def peft(width: int) -> dict[str, np.ndarray]:
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    return {
        f"{block}.lora_A.weight": np.arange(RANK * width, dtype=np.float32).reshape(RANK, width),
        f"{block}.lora_B.weight": np.ones((32, RANK), np.float32),
    }


@pytest.mark.parametrize(("tensors", "layout"), [(kohya(768), "kohya"), (peft(2048), "peft")])
def test_a_lora_is_told_by_its_layout_and_text_width(tmp_path, tensors, layout):
    path = tmp_path / "style.safetensors"
    save_file(tensors, path, metadata={"ss_network_dim": str(RANK)})
    lora = inspect_lora("style", path)
    assert (lora.layout, lora.context_width) == (layout, tensors[next(iter(tensors))].shape[1])
    assert lora.metadata == {"ss_network_dim": str(RANK)}


def test_a_lora_for_another_family_is_refused_by_name(tmp_path):
    save_file(peft(2048), tmp_path / "xl.safetensors")
    lora = inspect_lora("xl", tmp_path / "xl.safetensors")
    assert mismatch(lora, 2048, "SDXL model") is None
    assert mismatch(lora, 768, "model 'sd15'") == (
        "LoRA 'xl' was trained for a model reading SDXL text (2048 wide); model 'sd15' reads 768"
    )


def test_a_file_without_lora_weights_is_not_a_lora(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float32)},
              tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no LoRA weights in model.safetensors"):
        inspect_lora("model", tmp_path / "model.safetensors")


def test_a_truncated_lora_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(peft(768), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        inspect_lora("cut", path)


def test_the_a1111_hash_covers_the_tensors_and_not_the_metadata(tmp_path):
    tensors = peft(768)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, first, metadata={"note": "one"})
    save_file(tensors, second, metadata={"note": "a longer note"})
    # safetensors writes tensors in name order, each as its raw bytes.
    expected = hashlib.sha256(b"".join(tensors[k].tobytes() for k in sorted(tensors)))
    assert a1111_hash(first) == a1111_hash(second) == expected.hexdigest()[:12]
    assert first.read_bytes() != second.read_bytes()


def test_a_hash_the_file_records_is_the_one_a1111_uses(tmp_path):
    path = tmp_path / "kohya.safetensors"
    save_file(kohya(768), path, metadata={"sshs_model_hash": "0123456789abcdef" * 4})
    assert a1111_hash(path) == "0123456789ab"
