"""The SR evaluation metrics of BasicSR and the BSRN paper.

PSNR and SSIM on uint8-rounded images, computed in float64, after cropping ``crop_border``
pixels from every side; ``y_channel`` scores the BT.601 luma Y = 16 + 65.481 R + 128.553 G +
24.966 B (RGB in [0, 1]), otherwise every RGB channel (the NTIRE convention).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] (float64, not rounded) from an HxWx3 RGB image in [0, 255]."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img @ _Y_WEIGHTS + 16.0


def _prepare(img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool):
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if y_channel:
        a, b = rgb_to_y(img1), rgb_to_y(img2)
    else:
        a, b = np.asarray(img1, np.float64), np.asarray(img2, np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0,
         y_channel: bool = True) -> float:
    """PSNR in dB between two HxWx3 (or HxW) images in [0, 255]; inf when identical."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of one float64 plane: 11x11 Gaussian (sigma 1.5), 'valid' filtering, mean of map."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = torch.from_numpy(_gaussian_window())[None, None]
    planes = torch.from_numpy(np.stack([a, b, a * a, b * b, a * b]))[:, None]
    mu1, mu2, s11, s22, s12 = F.conv2d(planes, win)[:, 0]
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11, s22, s12 = s11 - mu1_sq, s22 - mu2_sq, s12 - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def ssim(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0,
         y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004, BasicSR form) between two images in [0, 255]; RGB averages the
    per-channel scores."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if a.ndim == 2:
        return _ssim_plane(a, b)
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """A (1, C, H, W) or (C, H, W) tensor in [0, 1] -> HxWxC uint8: clamp, x255, round."""
    if x.ndim == 4:
        x = x[0]
    arr = (x.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return arr


def uint8_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 (or HxW) uint8 -> (1, C, H, W) float32 in [0, 1]."""
    if img.ndim == 2:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
