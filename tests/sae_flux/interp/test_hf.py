"""The transformers VLM backend on a tiny random LLaVA built offline from configs."""

from __future__ import annotations

import pytest
from PIL import Image

from sae_flux.interp.chat import BackendError
from sae_flux.interp.hf import HFChat

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "{", "}", '"score":', "0.5", "system", "user", "assistant", ":"]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}),
        tokenizer=tokenizer, chat_template=TEMPLATE, patch_size=4, vision_feature_select_strategy="full",
        image_token="<image>", num_additional_image_tokens=1,
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=8, patch_size=4),
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128),
        image_token_id=4, vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config).eval(), processor


IMAGE = Image.new("RGB", (16, 16), (200, 20, 20))


def test_generation_runs_through_the_processor_chat_template_and_is_greedy(tiny_vlm):
    chat = HFChat(*tiny_vlm, max_new_tokens=4)
    first = chat.generate("judge", '"score":', [IMAGE, IMAGE])
    assert isinstance(first, str) and first == chat.generate("judge", '"score":', [IMAGE, IMAGE])


def test_random_model_output_is_not_json_and_is_reported(tiny_vlm, tmp_path):
    chat = HFChat(*tiny_vlm, max_new_tokens=4, retries=1, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="gave no valid JSON in 2 attempts"):
        chat.ask("judge", '"score":', [IMAGE], keys=("score",))
    assert not list(tmp_path.iterdir())


def test_json_answer_is_parsed_and_cached(tiny_vlm, tmp_path, monkeypatch):
    chat = HFChat(*tiny_vlm, cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr(chat, "generate", lambda *a: calls.append(a) or 'Sure: {"score": 0.5}')
    assert chat.ask("judge", "t", [IMAGE], keys=("score",)) == {"score": 0.5}
    assert chat.ask("judge", "t", [IMAGE], keys=("score",)) == {"score": 0.5} and len(calls) == 1


def test_from_pretrained_loads_a_saved_checkpoint_offline(tiny_vlm, tmp_path):
    model, processor = tiny_vlm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    chat = HFChat.from_pretrained(tmp_path)
    chat.max_new_tokens = 3
    assert isinstance(chat.generate("judge", "t", [IMAGE]), str) and chat.name == tmp_path.name
