"""bsrn.image_io on every kind of real-world file, generated here with Pillow (or, for the
16-bit colour kinds Pillow cannot write, by hand with zlib and struct)."""
from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from bsrn.errors import ImageError
from bsrn.image_io import (DEFAULT_MAX_PIXELS, Picture, read_image, read_rgb_uint8, to_8bit,
                           write_image)

RNG = np.random.default_rng(0)


def rand(h, w, c=None, dtype=np.uint8):
    hi = 256 if dtype == np.uint8 else 65536
    shape = (h, w) if c is None else (h, w, c)
    return RNG.integers(0, hi, shape, dtype=dtype)


@functools.lru_cache(maxsize=None)
def srgb_icc() -> bytes:
    """One sRGB profile per run (the profile embeds its creation time, so two calls can differ)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def png_by_hand(a: np.ndarray) -> bytes:
    """A 16-bit PNG written from the spec (filter type 0 on every row), independent of bsrn."""
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- 8-bit kinds
@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1), ("LA", 2), ("RGBA", 4)])
def test_plain_modes_are_read_exactly(tmp_path, mode, channels):
    a = rand(9, 13, channels)
    Image.fromarray(a if channels > 1 else a[:, :, 0], mode=mode).save(tmp_path / "x.png")
    pic = read_image(tmp_path / "x.png")
    assert pic.pixels.dtype == np.uint8 and pic.pixels.shape == (9, 13, channels)
    np.testing.assert_array_equal(pic.pixels, a)
    assert pic.has_alpha == (channels in (2, 4)) and pic.format == "PNG"


def test_palette_without_and_with_transparency(tmp_path):
    rgb = Image.fromarray(rand(12, 10, 3)).quantize(colors=16)
    rgb.save(tmp_path / "p.png")
    pic = read_image(tmp_path / "p.png")
    assert pic.pixels.shape == (12, 10, 3)
    np.testing.assert_array_equal(pic.pixels, np.asarray(rgb.convert("RGB")))

    rgb.info["transparency"] = 0
    rgb.save(tmp_path / "pt.png", transparency=0)
    pic = read_image(tmp_path / "pt.png")
    assert pic.pixels.shape == (12, 10, 4)
    index = np.asarray(rgb)
    assert (pic.pixels[..., 3][index == 0] == 0).all()
    assert (pic.pixels[..., 3][index != 0] == 255).all()


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = Image.fromarray(rand(8, 8, 4), mode="CMYK")
    cmyk.save(tmp_path / "c.tif")
    pic = read_image(tmp_path / "c.tif")
    assert pic.pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(pic.pixels, np.asarray(cmyk.convert("RGB")))


def test_one_bit_image_becomes_grey(tmp_path):
    Image.fromarray(rand(8, 8) > 127).save(tmp_path / "b.png")
    pic = read_image(tmp_path / "b.png")
    assert pic.pixels.shape == (8, 8, 1) and set(np.unique(pic.pixels)) <= {0, 255}


# ----------------------------------------------------------------------------- 16 bits
def test_16bit_grey_png_and_tiff_keep_16_bits_even_when_dark(tmp_path):
    a = rand(7, 11, dtype=np.uint16)
    dark = (a % 200).astype(np.uint16)  # max < 256: a value-based test would call it 8-bit
    for name, arr in (("g.png", a), ("g.tif", a), ("dark.png", dark)):
        Image.fromarray(arr).save(tmp_path / name)  # Pillow mode I;16
        pic = read_image(tmp_path / name)
        assert pic.pixels.dtype == np.uint16 and pic.bit_depth == 16
        np.testing.assert_array_equal(pic.pixels[:, :, 0], arr)


@pytest.mark.parametrize("c", [2, 3, 4])
def test_16bit_colour_png_written_by_hand_is_read_exactly(tmp_path, c):
    a = rand(6, 5, c, dtype=np.uint16)
    (tmp_path / "h.png").write_bytes(png_by_hand(a))
    pic = read_image(tmp_path / "h.png")
    assert pic.pixels.dtype == np.uint16 and pic.pixels.shape == (6, 5, c)
    np.testing.assert_array_equal(pic.pixels, a)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_write_read_round_trip(tmp_path, c, ext):
    a = rand(10, 7, c, dtype=np.uint16)
    path = tmp_path / f"r{ext}"
    write_image(path, a, icc_profile=srgb_icc())
    pic = read_image(path)
    expect = a[:, :, [0, 0, 0, 1]] if (c, ext) == (2, ".tif") else a  # LA TIFF is stored RGBA
    np.testing.assert_array_equal(pic.pixels, expect)
    assert pic.icc_profile == srgb_icc()
    # An independent decoder (Pillow keeps the high byte of 16-bit colour) agrees.
    with Image.open(path) as im:
        if c >= 3:
            np.testing.assert_array_equal(np.asarray(im)[..., :c], (a >> 8).astype(np.uint8))


def test_16bit_to_8bit_formats_round_by_257(tmp_path):
    assert to_8bit(np.array([0, 128, 129, 257, 385, 386, 65535], np.uint16)).tolist() == \
        [0, 0, 1, 1, 1, 2, 255]
    a = rand(16, 16, 3, dtype=np.uint16)
    write_image(tmp_path / "x.bmp", a)
    np.testing.assert_array_equal(read_image(tmp_path / "x.bmp").pixels, to_8bit(a))


# ----------------------------------------------------------------------------- EXIF, ICC
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    a = rand(5, 8, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as im:
        expect = np.asarray(ImageOps.exif_transpose(im))
    pic = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(pic.pixels, expect)
    # The orientation is consumed: writing it back must not rotate a second time.
    write_image(tmp_path / "w.png", pic.pixels, exif=pic.exif)
    with Image.open(tmp_path / "w.png") as im:
        assert im.getexif().get(0x0112, 1) == 1


def test_exif_rotated_jpeg(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)
    a[:8, :16] = 255  # white top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    pic = read_image(tmp_path / "r.jpg")
    assert pic.pixels.shape == (32, 16, 3)
    assert pic.pixels[:16, 8:].mean() > 200 and pic.pixels[16:, :].mean() < 50  # now top-right


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".webp"])
def test_icc_profile_is_kept(tmp_path, ext):
    icc = srgb_icc()
    Image.fromarray(rand(8, 8, 3)).save(tmp_path / f"i{ext}", icc_profile=icc)
    pic = read_image(tmp_path / f"i{ext}")
    assert pic.icc_profile == icc
    write_image(tmp_path / f"o{ext}", pic.pixels, icc_profile=pic.icc_profile)
    with Image.open(tmp_path / f"o{ext}") as im:
        assert im.info.get("icc_profile") == icc


def test_jpeg_written_at_quality_95_without_chroma_subsampling(tmp_path):
    from PIL import JpegImagePlugin

    write_image(tmp_path / "q.jpg", rand(32, 32, 3))
    with Image.open(tmp_path / "q.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
        ref = Image.fromarray(rand(8, 8, 3))
        buf = io.BytesIO()
        ref.save(buf, format="JPEG", quality=95)
        assert im.quantization == Image.open(buf).quantization


def test_jpeg_cannot_take_alpha(tmp_path):
    with pytest.raises(ImageError, match="transparency"):
        write_image(tmp_path / "a.jpg", rand(4, 4, 4))


def test_non_ascii_path(tmp_path):
    path = tmp_path / "fötö 画像 ñ.png"
    a = rand(6, 6, 3)
    write_image(path, a)
    np.testing.assert_array_equal(read_image(path).pixels, a)


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    write_image(tmp_path / "p.png", rand(4, 4, 3))
    mode = stat.S_IMODE(os.stat(tmp_path / "p.png").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_default_ext_follows_format_alpha_and_depth():
    assert Picture(rand(2, 2, 3), format="JPEG").default_ext() == ".jpg"
    assert Picture(rand(2, 2, 4), format="JPEG").default_ext() == ".png"
    assert Picture(rand(2, 2, 3, dtype=np.uint16), format="TIFF").default_ext() == ".tiff"


def test_read_rgb_uint8_still_replicates_grey(tmp_path):
    Image.fromarray(rand(5, 5)).save(tmp_path / "g.png")
    assert read_rgb_uint8(tmp_path / "g.png").shape == (5, 5, 3)


# ----------------------------------------------------------------------------- broken files
def _one_line_naming(err, path):
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rand(64, 64, 3)).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert "cannot decode" in _one_line_naming(e, path)


@pytest.mark.parametrize("name,content,words", [
    ("noise.png", bytes(RNG.integers(0, 256, 4096, dtype=np.uint8)), "not an image"),
    ("empty.png", b"", "empty file"),
    ("notes.png", "just some text\n".encode(), "not an image"),
], ids=["random-bytes", "empty", "text"])
def test_non_images(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert words in _one_line_naming(e, path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def _bomb_png(w, h) -> bytes:
    """A PNG header claiming w x h 1-bit pixels with almost no data: tiny file, huge image."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_and_limit_can_be_raised(tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    small = tmp_path / "small.png"
    Image.fromarray(rand(100, 100, 3)).save(small)
    with pytest.raises(ImageError) as e:
        read_image(small, max_pixels=5000)
    assert "decompression-bomb limit of 5,000" in _one_line_naming(e, small)
    assert read_image(small, max_pixels=10_000).pixels.shape == (100, 100, 3)

    bomb = tmp_path / "huge.png"
    bomb.write_bytes(_bomb_png(15000, 12000))  # 180 MP: over Pillow's own error limit too
    with pytest.raises(ImageError) as e:
        read_image(bomb)
    assert f"{DEFAULT_MAX_PIXELS:,}" in _one_line_naming(e, bomb)
    # Raising the limit lets the file past both guards; it then fails as the broken data it is.
    with pytest.raises(ImageError) as e:
        read_image(bomb, max_pixels=10 ** 10)
    assert "cannot decode" in _one_line_naming(e, bomb)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's global is restored


def test_parallel_deflate_is_one_valid_zlib_stream():
    from bsrn.image_io import _parallel_deflate

    rng = np.random.default_rng(0)
    data = np.repeat(rng.integers(0, 256, 40_000, dtype=np.uint8), 3)  # compressible
    for band in (1000, 7777, 10 ** 7):  # many bands, uneven bands, one band
        assert zlib.decompress(_parallel_deflate(data, 3, band=band)) == data.tobytes()


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint8, 4), (np.uint8, 1),
                                            (np.uint16, 3), (np.uint16, 2)])
def test_large_png_writer_round_trips_with_metadata(tmp_path, monkeypatch, dtype, channels):
    """Large PNGs use bsrn's own (parallel) encoder: Pillow reads back the same pixels, the ICC
    profile and the EXIF."""
    import bsrn.image_io as io_mod
    from PIL import Image

    monkeypatch.setattr(io_mod, "PNG_PARALLEL_MIN_VALUES", 1)
    rng = np.random.default_rng(1)
    peak = 255 if dtype == np.uint8 else 65535
    a = rng.integers(0, peak + 1, (37, 53, channels)).astype(dtype)
    icc = bytes(range(256)) * 3
    exif = Image.Exif()
    exif[0x0110] = "bsrn test camera"
    path = tmp_path / "big.png"
    io_mod.write_image(path, a, icc_profile=icc, exif=exif.tobytes())
    with Image.open(path) as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x0110) == "bsrn test camera"
    back = io_mod.read_image(path).pixels
    back = back if back.ndim == 3 else back[:, :, None]
    assert back.dtype == dtype and np.array_equal(back, a)
