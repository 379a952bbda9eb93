"""Trains the demo model: first the VAE, then the UNet and text encoder together on its latents.

Run it as ``python manage.py train_demo_model --out DIR`` (or ``python -m
generation.demo_model.train --out DIR``). Everything lands in DIR: ``vae/``, ``latents.pt``,
``checkpoint.pt`` (resumable), ``log.jsonl`` and, at the end, ``pipeline/`` in diffusers layout.
"""

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from tqdm import tqdm

from . import architecture, dataset
from .sampling import adherence
from .tokenizer import build_tokenizer


@dataclass
class TrainConfig:
    out: Path
    size: str = "full"
    device: str = "cpu"
    seed: int = 0
    minutes: float | None = None
    images: int = 20_000
    vae_steps: int = 1_200
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 8_000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_max: float = 0.999
    empty_caption: float = 0.1
    gap_every: int = 100
    adherence_every: int = 500
    adherence_prompts: int = 24
    checkpoint_minutes: float = 5.0
    threads: int = 2

    @property
    def arch(self) -> architecture.Size:
        return architecture.SIZES[self.size]


def _log(cfg: TrainConfig, **record: object) -> None:
    with open(cfg.out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    tqdm.write(json.dumps(record))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(cfg: TrainConfig, images: np.ndarray) -> AutoencoderKL:
    """Train the VAE on reconstruction with a small KL term, or load it from a finished run."""
    vae_dir = cfg.out / "vae"
    if (vae_dir / "config.json").exists():
        return AutoencoderKL.from_pretrained(vae_dir).to(cfg.device)
    vae = architecture.build_vae(cfg.arch).to(cfg.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    pool = _to_tensor(images)
    for step in tqdm(range(cfg.vae_steps), desc="vae", mininterval=10):
        batch = pool[torch.randint(len(pool), (cfg.vae_batch,))].to(cfg.device)
        posterior = vae.encode(batch).latent_dist
        mse = F.mse_loss(vae.decode(posterior.sample()).sample, batch)
        loss = mse + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            _log(cfg, phase="vae", step=step, mse=round(mse.item(), 5))
    vae.eval()
    latents = _encode(vae, pool, cfg.device)
    # Scale latents to unit variance, as diffusion assumes.
    vae.register_to_config(scaling_factor=round(1 / latents.std().item(), 4))
    _log(cfg, phase="vae", latent_std=round(latents.std().item(), 4))
    vae.save_pretrained(vae_dir)
    return vae


@torch.no_grad()
def _encode(vae: AutoencoderKL, pool: torch.Tensor, device: str) -> torch.Tensor:
    chunks = [
        vae.encode(pool[i : i + 256].to(device)).latent_dist.mean.cpu()
        for i in range(0, len(pool), 256)
    ]
    return torch.cat(chunks)


def training_set(cfg: TrainConfig) -> tuple[np.ndarray, list[dataset.Triple]]:
    return dataset.examples(cfg.images)


def latent_pool(cfg: TrainConfig, vae: AutoencoderKL, images: np.ndarray) -> torch.Tensor:
    """Scaled latents of the whole training set, cached in the run directory."""
    path = cfg.out / "latents.pt"
    if path.exists():
        return torch.load(path)
    latents = _encode(vae, _to_tensor(images), cfg.device) * vae.config.scaling_factor
    torch.save(latents, path)
    return latents


class Trainer:
    """The UNet + text encoder stage, with EMA copies, resumable checkpoints and evaluation."""

    def __init__(
        self,
        cfg: TrainConfig,
        vae: AutoencoderKL,
        latents: torch.Tensor,
        triples: list[dataset.Triple],
    ):
        self.cfg, self.vae, self.latents = cfg, vae, latents
        self.tokenizer = build_tokenizer()
        self.unet = architecture.build_unet(cfg.arch).to(cfg.device)
        self.text_encoder = architecture.build_text_encoder(cfg.arch, self.tokenizer).to(cfg.device)
        self.ema_unet, self.ema_text = copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder)
        self.params = [*self.unet.parameters(), *self.text_encoder.parameters()]
        self.ema_params = [*self.ema_unet.parameters(), *self.ema_text.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr)
        self.schedule = architecture.training_scheduler()
        self.alphas = self.schedule.alphas_cumprod.to(cfg.device)
        self.ids = self._tokenize([t.caption for t in triples])
        self.empty = self._tokenize([""])[0]
        self.step = 0

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.cfg.device)

    def v_loss(
        self, latents: torch.Tensor, ids: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        a = self.alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * latents
        pred = self.unet(noisy, t, self.text_encoder(ids)[0]).sample
        return F.mse_loss(pred, target)

    def train_step(self) -> float:
        cfg = self.cfg
        index = torch.randint(len(self.latents), (cfg.batch,))
        ids = self.ids[index].clone()
        ids[torch.rand(cfg.batch) < cfg.empty_caption] = self.empty
        latents = self.latents[index].to(cfg.device)
        t = torch.randint(architecture.TRAIN_TIMESTEPS, (cfg.batch,), device=cfg.device)
        loss = self.v_loss(latents, ids, t, torch.randn_like(latents))
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_max, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)

    @torch.no_grad()
    def caption_gap(self) -> tuple[float, float]:
        """Loss at t in [700, 999] with the right captions and with shuffled ones.

        A text pathway that learned nothing gives the same loss for both: the failure to catch
        early (the first calibration run, docs/demo_model.md).
        """
        g = torch.Generator().manual_seed(1)
        index = torch.randint(len(self.latents), (64,), generator=g)
        latents = self.latents[index].to(self.cfg.device)
        t = torch.randint(700, 1000, (64,), generator=g).to(self.cfg.device)
        noise = torch.randn(latents.shape, generator=g).to(self.cfg.device)
        ids = self.ids[index]
        right = self.v_loss(latents, ids, t, noise).item()
        shuffled = self.v_loss(latents, ids.roll(len(ids) // 2, 0), t, noise).item()
        return right, shuffled

    def pipeline(self) -> StableDiffusionPipeline:
        """A pipeline over the EMA weights, exactly as it will be saved."""
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.ema_text,
            tokenizer=self.tokenizer,
            unet=self.ema_unet,
            scheduler=architecture.sampling_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def state(self) -> dict:
        return {
            "step": self.step,
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": {k: str(v) for k, v in asdict(self.cfg).items()},
        }

    def load(self, state: dict) -> None:
        self.step = state["step"]
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text.load_state_dict(state["ema_text"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])


def save_checkpoint(trainer: Trainer) -> None:
    path = trainer.cfg.out / "checkpoint.pt"
    torch.save(trainer.state(), path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def _evaluate(trainer: Trainer, loss: float, started: float) -> None:
    cfg = trainer.cfg
    record: dict = {
        "phase": "unet",
        "step": trainer.step,
        "loss": round(loss, 4),
        "minutes": round((time.time() - started) / 60, 2),
    }
    if trainer.step % cfg.gap_every == 0:
        right, shuffled = trainer.caption_gap()
        record |= {"gap_right": round(right, 4), "gap_shuffled": round(shuffled, 4)}
    if trainer.step % cfg.adherence_every == 0:
        record["adherence_g1"] = adherence(trainer.pipeline(), cfg.adherence_prompts, guidance=1.0)
        record["adherence_g3"] = adherence(trainer.pipeline(), cfg.adherence_prompts, guidance=3.0)
    _log(cfg, **record)


def train_unet(trainer: Trainer, deadline: float, resume: bool) -> None:
    """Train until the step budget or the deadline, checkpointing every few minutes."""
    cfg = trainer.cfg
    checkpoint = cfg.out / "checkpoint.pt"
    if resume and checkpoint.exists():
        trainer.load(torch.load(checkpoint, weights_only=False))
        _log(cfg, phase="unet", resumed_at=trainer.step)
    started = last_save = time.time()
    bar = tqdm(total=cfg.unet_steps, initial=trainer.step, desc="unet", mininterval=10)
    while trainer.step < cfg.unet_steps and time.time() < deadline:
        loss = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if trainer.step % cfg.gap_every == 0 or trainer.step % cfg.adherence_every == 0:
            _evaluate(trainer, loss, started)
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            save_checkpoint(trainer)
            last_save = time.time()
    bar.close()
    save_checkpoint(trainer)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train the whole model and save it; returns the diffusers directory.

    1. Render the training set and train (or reload) the VAE; set its scaling factor.
    2. Encode the training set to scaled latents once.
    3. Train UNet and text encoder on the latents until the step budget or the deadline.
    4. Save the EMA weights as a stock StableDiffusionPipeline directory.
    """
    deadline = time.time() + cfg.minutes * 60 if cfg.minutes else math.inf
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    images, triples = training_set(cfg)
    vae = train_vae(cfg, images)
    latents = latent_pool(cfg, vae, images)
    trainer = Trainer(cfg, vae, latents, triples)
    train_unet(trainer, deadline, resume)
    target = cfg.out / "pipeline"
    trainer.pipeline().save_pretrained(target, safe_serialization=True)
    _log(cfg, phase="done", step=trainer.step, saved=str(target))
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint")
    parser.add_argument("--size", choices=sorted(architecture.SIZES), default="full")
    parser.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--images", type=int, default=TrainConfig.images, help="training set size")


def config_from(options: dict) -> TrainConfig:
    return TrainConfig(
        out=Path(options["out"]),
        minutes=options["minutes"],
        device=options["device"],
        size=options["size"],
        unet_steps=options["unet_steps"],
        vae_steps=options["vae_steps"],
        images=options["images"],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = vars(parser.parse_args())
    train(config_from(args), resume=args["resume"])
