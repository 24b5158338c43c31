//! Decode → orient → resize → encode, with the limits checked before any
//! pixel is decoded. Runs on a blocking thread (the caller's
//! `spawn_blocking`); everything here is synchronous and total: any input
//! gives `Ok` or a [`TransformError`], never a panic.
//!
//! - The format is sniffed from the bytes (never the key's extension);
//!   only JPEG, PNG, GIF and WebP are decoded.
//! - Width, height and pixel area come from the header and are checked
//!   against [`Limits`] first: a 50,000 × 50,000 PNG of a few KB is
//!   refused without allocating its pixels. The decoders also get an
//!   allocation ceiling (the memory budget) as a second line.
//! - JPEG sources are decoded with DCT-domain downscaling (1/2, 1/4, 1/8)
//!   when the output is that much smaller — libvips' shrink-on-load —
//!   then resized with `fast_image_resize` (SIMD convolution).
//! - EXIF orientation is applied; the output is encoded from pixels only,
//!   so no metadata (EXIF, XMP, ICC) survives. Animated inputs give their
//!   first frame (GIF, WebP) or their default image (APNG: the `IDAT`
//!   image, the first frame when it is part of the animation), and the
//!   output is always a still image.
//! - The time budget holds inside a stage, not only between them: the
//!   decoders read the source through [`Budgeted`] and the JPEG and PNG
//!   encoders write through it, so a decode or encode that overruns stops
//!   at its next read or write. What cannot be interrupted that way
//!   (lossy WebP decoding, which reads whole partitions first; the
//!   resize; the WebP and AVIF encoders) is bounded by the size limits
//!   and checked when it ends; the caller answers at the deadline anyway
//!   and keeps the transform's slot until this thread returns.

use std::io::{BufRead, Cursor, Read, Seek, Write};
use std::time::Instant;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::params::{Fit, Format, Gravity, Params};

/// What a transform may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest source object read (bytes).
    pub max_source_bytes: u64,
    /// Largest source width and height (pixels), from the header.
    pub max_source_side: u32,
    /// Largest source area (pixels), from the header.
    pub max_source_pixels: u64,
    /// Largest output width and height.
    pub max_output_side: u32,
    /// Decoder allocation ceiling (bytes).
    pub max_alloc: u64,
    /// AVIF encoder speed, 1 (slowest, smallest) to 10 (fastest): what one
    /// AVIF encode costs (builds with the `avif` feature only).
    pub avif_speed: u8,
}

/// ravif's speed for thumbnails: see docs/media.md for the measurements.
pub const DEFAULT_AVIF_SPEED: u8 = 8;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_bytes: 50 << 20,
            max_source_side: 16_384,
            max_source_pixels: 40_000_000,
            max_output_side: 4096,
            max_alloc: 512 << 20,
            avif_speed: DEFAULT_AVIF_SPEED,
        }
    }
}

/// Why a transform failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// Not an image we decode (unknown signature).
    #[error("the source is not an image in a supported format (JPEG, PNG, GIF, WebP)")]
    NotAnImage,
    /// Truncated or corrupt.
    #[error("the source image cannot be decoded: {0}")]
    Corrupt(String),
    /// Over a limit (bytes, dimensions, area, memory).
    #[error("{0}")]
    TooLarge(String),
    /// Over the time budget.
    #[error("the transform exceeded its time budget")]
    Timeout,
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// A rendered image.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
}

/// How often [`Budgeted`] reads the clock: every this many calls.
/// jpeg-decoder reads its entropy-coded data a byte at a time, so reading
/// the clock on every call would cost more than a 1/8-scale decode.
const CHECK_EVERY: u32 = 64;

/// A reader or writer that fails with `TimedOut` once the deadline has
/// passed, so the decoder or encoder using it stops where it is.
struct Budgeted<T> {
    inner: T,
    deadline: Instant,
    calls: u32,
}

impl<T> Budgeted<T> {
    fn new(inner: T, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            calls: 0,
        }
    }

    fn tick(&mut self) -> std::io::Result<()> {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(CHECK_EVERY) && Instant::now() > self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the transform's time budget ran out",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tick()?;
        self.inner.read(buf)
    }
}

impl<R: BufRead> BufRead for Budgeted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.tick()?;
        self.inner.fill_buf()
    }
    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl<R: Seek> Seek for Budgeted<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<W: Write> Write for Budgeted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tick()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A stage's error, or [`TransformError::Timeout`] when the deadline has
/// passed (the error is then most likely [`Budgeted`]'s, wrapped by the
/// codec in its own error type).
fn or_timeout(deadline: Instant, error: TransformError) -> TransformError {
    if Instant::now() > deadline {
        TransformError::Timeout
    } else {
        error
    }
}

/// Source dimensions and format from the header only.
pub fn probe(data: &[u8]) -> Result<(ImageFormat, u32, u32), TransformError> {
    let reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)) => {
            f
        }
        _ => return Err(TransformError::NotAnImage),
    };
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    Ok((format, width, height))
}

fn check_source(limits: &Limits, width: u32, height: u32) -> Result<(), TransformError> {
    if width == 0 || height == 0 {
        return Err(TransformError::Corrupt("the image has no pixels".into()));
    }
    if width > limits.max_source_side || height > limits.max_source_side {
        return Err(TransformError::TooLarge(format!(
            "the source is {width}×{height} pixels; at most {} per side are decoded",
            limits.max_source_side
        )));
    }
    let area = u64::from(width) * u64::from(height);
    if area > limits.max_source_pixels {
        return Err(TransformError::TooLarge(format!(
            "the source has {area} pixels; at most {} are decoded",
            limits.max_source_pixels
        )));
    }
    Ok(())
}

/// Where the output comes from and goes to.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    /// Output image size.
    out_w: u32,
    out_h: u32,
    /// Region of the (oriented) source, in source pixels.
    crop: (f64, f64, f64, f64),
    /// Size the region is scaled to, and where it lands on the output
    /// (`contain` letterboxes).
    scaled_w: u32,
    scaled_h: u32,
    offset: (u32, u32),
}

fn align(gravity: Gravity, free: f64) -> (f64, f64) {
    // Fractions of the free space left of / above the placed box.
    let (x, y) = match gravity {
        Gravity::Center => (0.5, 0.5),
        Gravity::North => (0.5, 0.0),
        Gravity::South => (0.5, 1.0),
        Gravity::East => (1.0, 0.5),
        Gravity::West => (0.0, 0.5),
        Gravity::NorthEast => (1.0, 0.0),
        Gravity::NorthWest => (0.0, 0.0),
        Gravity::SouthEast => (1.0, 1.0),
        Gravity::SouthWest => (0.0, 1.0),
    };
    (x * free, y * free)
}

fn round_side(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

/// The output geometry of `params` for an oriented source of `sw`×`sh`.
fn geometry(params: &Params, sw: u32, sh: u32) -> Geometry {
    let (swf, shf) = (f64::from(sw), f64::from(sh));
    let whole = (0.0, 0.0, swf, shf);
    let (w, h) = match (params.width, params.height) {
        (None, None) => (sw, sh),
        (Some(w), None) => (w, round_side(shf * f64::from(w) / swf)),
        (None, Some(h)) => (round_side(swf * f64::from(h) / shf), h),
        (Some(w), Some(h)) => (w, h),
    };
    let plain = |w: u32, h: u32| Geometry {
        out_w: w,
        out_h: h,
        crop: whole,
        scaled_w: w,
        scaled_h: h,
        offset: (0, 0),
    };
    if params.width.is_none() || params.height.is_none() {
        // One side given: the aspect ratio decides the other; never
        // upscale beyond what was asked.
        return plain(w, h);
    }
    let (wf, hf) = (f64::from(w), f64::from(h));
    match params.fit {
        Fit::Fill => plain(w, h),
        Fit::Inside => {
            let scale = (wf / swf).min(hf / shf).min(1.0);
            plain(round_side(swf * scale), round_side(shf * scale))
        }
        Fit::Contain => {
            let scale = (wf / swf).min(hf / shf);
            let (scaled_w, scaled_h) = (
                round_side(swf * scale).min(w),
                round_side(shf * scale).min(h),
            );
            let (x, _) = align(params.gravity, f64::from(w - scaled_w));
            let (_, y) = align(params.gravity, f64::from(h - scaled_h));
            Geometry {
                out_w: w,
                out_h: h,
                crop: whole,
                scaled_w,
                scaled_h,
                offset: (x.round() as u32, y.round() as u32),
            }
        }
        Fit::Cover => {
            let scale = (wf / swf).max(hf / shf);
            let (crop_w, crop_h) = ((wf / scale).min(swf), (hf / scale).min(shf));
            let (x, _) = align(params.gravity, swf - crop_w);
            let (_, y) = align(params.gravity, shf - crop_h);
            Geometry {
                out_w: w,
                out_h: h,
                crop: (x, y, crop_w, crop_h),
                scaled_w: w,
                scaled_h: h,
                offset: (0, 0),
            }
        }
    }
}

fn swaps_sides(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Renders `data` per `params` (format already resolved, never `auto`).
pub fn render(
    data: &[u8],
    params: &Params,
    limits: &Limits,
    deadline: Instant,
) -> Result<Rendered, TransformError> {
    let (format, width, height) = probe(data)?;
    check_source(limits, width, height)?;
    let over_time = || {
        if Instant::now() > deadline {
            Err(TransformError::Timeout)
        } else {
            Ok(())
        }
    };
    let mut image = match format {
        ImageFormat::Jpeg => decode_jpeg(data, params, limits, width, height, deadline),
        _ => decode_other(data, limits, deadline),
    }
    .map_err(|e| or_timeout(deadline, e))?;
    over_time()?;
    let (sw, sh) = (image.width(), image.height());
    let g = geometry(params, sw, sh);
    if g.out_w > limits.max_output_side || g.out_h > limits.max_output_side {
        return Err(TransformError::TooLarge(format!(
            "the output would be {}×{}; at most {} per side",
            g.out_w, g.out_h, limits.max_output_side
        )));
    }
    let alpha = image.color().has_alpha() && params.format != Format::Jpeg;
    let (pixel_type, channels) = if alpha {
        (fr::PixelType::U8x4, 4usize)
    } else {
        (fr::PixelType::U8x3, 3usize)
    };
    let pixels = if alpha {
        std::mem::take(&mut image).into_rgba8().into_raw()
    } else if image.color().has_alpha() {
        flatten_on_white(std::mem::take(&mut image).into_rgba8().into_raw())
    } else {
        std::mem::take(&mut image).into_rgb8().into_raw()
    };
    let source = fr::images::Image::from_vec_u8(sw, sh, pixels, pixel_type)
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    let mut scaled = fr::images::Image::new(g.scaled_w, g.scaled_h, pixel_type);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
        .crop(g.crop.0, g.crop.1, g.crop.2, g.crop.3);
    fr::Resizer::new()
        .resize(&source, &mut scaled, &options)
        .map_err(|e| TransformError::Encode(e.to_string()))?;
    drop(source);
    over_time()?;
    let mut out = scaled.into_vec();
    if (g.scaled_w, g.scaled_h) != (g.out_w, g.out_h) {
        out = letterbox(&out, channels, &g);
    }
    let rendered = encode(&out, g.out_w, g.out_h, alpha, params, limits, deadline)
        .map_err(|e| or_timeout(deadline, e))?;
    over_time()?;
    Ok(rendered)
}

/// `contain`: the scaled image on a canvas of the output size (transparent
/// with alpha, white without).
fn letterbox(scaled: &[u8], channels: usize, g: &Geometry) -> Vec<u8> {
    let fill: &[u8] = if channels == 4 {
        &[0, 0, 0, 0]
    } else {
        &[255, 255, 255]
    };
    let (ow, oh) = (g.out_w as usize, g.out_h as usize);
    let mut canvas: Vec<u8> = fill
        .iter()
        .copied()
        .cycle()
        .take(ow * oh * channels)
        .collect();
    let (sw, sh) = (g.scaled_w as usize, g.scaled_h as usize);
    let (ox, oy) = (g.offset.0 as usize, g.offset.1 as usize);
    for row in 0..sh.min(oh.saturating_sub(oy)) {
        let width = sw.min(ow.saturating_sub(ox)) * channels;
        let from = row * sw * channels;
        let to = ((oy + row) * ow + ox) * channels;
        canvas[to..to + width].copy_from_slice(&scaled[from..from + width]);
    }
    canvas
}

/// RGBA → RGB over white (JPEG has no alpha).
fn flatten_on_white(rgba: Vec<u8>) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| {
            let a = u16::from(p[3]);
            let blend = move |c: u8| ((u16::from(c) * a + 255 * (255 - a)) / 255) as u8;
            [blend(p[0]), blend(p[1]), blend(p[2])]
        })
        .collect()
}

fn decode_other(
    data: &[u8],
    limits: &Limits,
    deadline: Instant,
) -> Result<DynamicImage, TransformError> {
    let mut reader = ImageReader::new(Budgeted::new(Cursor::new(data), deadline))
        .with_guessed_format()
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_source_side);
    decoder_limits.max_image_height = Some(limits.max_source_side);
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // For an animation this is one still picture: `read_image` of the GIF
    // and WebP decoders gives the first frame, the PNG decoder the default
    // (`IDAT`) image; later frames are never decoded.
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn decode_error(error: image::ImageError) -> TransformError {
    match error {
        image::ImageError::Limits(e) => TransformError::TooLarge(e.to_string()),
        image::ImageError::Unsupported(e) => TransformError::Corrupt(e.to_string()),
        other => TransformError::Corrupt(other.to_string()),
    }
}

/// JPEG through `jpeg-decoder`, downscaled in the DCT domain to the
/// smallest size that still covers what the output needs.
fn decode_jpeg(
    data: &[u8],
    params: &Params,
    limits: &Limits,
    width: u32,
    height: u32,
    deadline: Instant,
) -> Result<DynamicImage, TransformError> {
    let mut decoder = jpeg_decoder::Decoder::new(Budgeted::new(Cursor::new(data), deadline));
    decoder.set_max_decoding_buffer_size(limits.max_alloc.min(usize::MAX as u64) as usize);
    decoder
        .read_info()
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let (ow, oh) = if swaps_sides(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    // The scale the output needs from the oriented source (cover crops
    // scale by the larger factor); the decoder picks a DCT scale at or
    // above it.
    let g = geometry(params, ow, oh);
    let need = (f64::from(g.scaled_w) / g.crop.2).max(f64::from(g.scaled_h) / g.crop.3);
    if need < 0.5 {
        let req_w = (f64::from(width) * need)
            .ceil()
            .clamp(1.0, f64::from(u16::MAX)) as u16;
        let req_h = (f64::from(height) * need)
            .ceil()
            .clamp(1.0, f64::from(u16::MAX)) as u16;
        decoder
            .scale(req_w, req_h)
            .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    }
    let pixels = decoder
        .decode()
        .map_err(|e| TransformError::Corrupt(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| TransformError::Corrupt("no image information".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let image = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::L16 => {
            // Big-endian 16-bit samples: keep the high byte.
            let bytes = pixels.chunks_exact(2).map(|p| p[0]).collect();
            image::GrayImage::from_raw(w, h, bytes).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            let rgb = pixels
                .chunks_exact(4)
                .flat_map(|p| {
                    let k = u16::from(p[3]);
                    let c = move |v: u8| ((u16::from(v) * k) / 255) as u8;
                    [c(p[0]), c(p[1]), c(p[2])]
                })
                .collect();
            image::RgbImage::from_raw(w, h, rgb).map(DynamicImage::ImageRgb8)
        }
    };
    let mut image = image.ok_or_else(|| TransformError::Corrupt("short pixel buffer".into()))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    alpha: bool,
    params: &Params,
    limits: &Limits,
    deadline: Instant,
) -> Result<Rendered, TransformError> {
    use image::ImageEncoder;
    let color = if alpha {
        image::ExtendedColorType::Rgba8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let quality = params.quality;
    let mut bytes = Vec::new();
    let content_type = match params.format {
        Format::Jpeg | Format::Auto => {
            let out = Budgeted::new(&mut bytes, deadline);
            image::codecs::jpeg::JpegEncoder::new_with_quality(out, quality)
                .write_image(pixels, width, height, color)
                .map_err(|e| TransformError::Encode(e.to_string()))?;
            "image/jpeg"
        }
        Format::Png => {
            let out = Budgeted::new(&mut bytes, deadline);
            image::codecs::png::PngEncoder::new(out)
                .write_image(pixels, width, height, color)
                .map_err(|e| TransformError::Encode(e.to_string()))?;
            "image/png"
        }
        Format::Avif => {
            bytes = encode_avif(pixels, width, height, alpha, quality, limits.avif_speed)?;
            "image/avif"
        }
        Format::Webp => {
            let encoder = if alpha {
                webp::Encoder::from_rgba(pixels, width, height)
            } else {
                webp::Encoder::from_rgb(pixels, width, height)
            };
            let memory = encoder
                .encode_simple(false, f32::from(quality))
                .map_err(|e| TransformError::Encode(format!("{e:?}")))?;
            bytes = memory.to_vec();
            "image/webp"
        }
    };
    Ok(Rendered {
        bytes,
        width,
        height,
        content_type,
    })
}

/// AVIF with ravif (rav1e), one thread: a transform holds one slot, and
/// the slots are what bound the CPU transforms use.
#[cfg(feature = "avif")]
fn encode_avif(
    pixels: &[u8],
    width: u32,
    height: u32,
    alpha: bool,
    quality: u8,
    speed: u8,
) -> Result<Vec<u8>, TransformError> {
    // ravif panics outside these ranges; the parameters and flags are
    // validated to them, this keeps a mistake from becoming a panic.
    let quality = f32::from(quality.clamp(1, 100));
    let encoder = ravif::Encoder::new()
        .with_quality(quality)
        .with_alpha_quality(quality)
        .with_speed(speed.clamp(1, 10))
        .with_num_threads(Some(1));
    let (w, h) = (width as usize, height as usize);
    let encoded = if alpha {
        let rgba: Vec<ravif::RGBA8> = pixels
            .chunks_exact(4)
            .map(|p| ravif::RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect();
        encoder.encode_rgba(ravif::Img::new(&rgba[..], w, h))
    } else {
        let rgb: Vec<ravif::RGB8> = pixels
            .chunks_exact(3)
            .map(|p| ravif::RGB8::new(p[0], p[1], p[2]))
            .collect();
        encoder.encode_rgb(ravif::Img::new(&rgb[..], w, h))
    };
    encoded
        .map(|e| e.avif_file)
        .map_err(|e| TransformError::Encode(e.to_string()))
}

/// Without the `avif` feature the parameters refuse `fmt=avif` (400), so
/// this is reached only by a mistake: an error, not a panic.
#[cfg(not(feature = "avif"))]
fn encode_avif(
    _pixels: &[u8],
    _width: u32,
    _height: u32,
    _alpha: bool,
    _quality: u8,
    _speed: u8,
) -> Result<Vec<u8>, TransformError> {
    Err(TransformError::Encode(
        "AVIF is not offered by this build".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(w: Option<u32>, h: Option<u32>, fit: Fit) -> Params {
        Params {
            width: w,
            height: h,
            fit,
            gravity: Gravity::Center,
            format: Format::Png,
            quality: 80,
        }
    }

    #[test]
    fn geometries() {
        let g = geometry(&params(Some(400), None, Fit::Cover), 4000, 3000);
        assert_eq!((g.out_w, g.out_h), (400, 300));
        let g = geometry(&params(Some(100), Some(100), Fit::Cover), 400, 200);
        assert_eq!((g.out_w, g.out_h), (100, 100));
        assert_eq!(g.crop, (100.0, 0.0, 200.0, 200.0));
        let g = geometry(&params(Some(100), Some(100), Fit::Contain), 400, 200);
        assert_eq!(
            (g.out_w, g.out_h, g.scaled_w, g.scaled_h),
            (100, 100, 100, 50)
        );
        assert_eq!(g.offset, (0, 25));
        let g = geometry(&params(Some(100), Some(100), Fit::Inside), 400, 200);
        assert_eq!((g.out_w, g.out_h), (100, 50));
        let g = geometry(&params(Some(1000), Some(1000), Fit::Inside), 400, 200);
        assert_eq!((g.out_w, g.out_h), (400, 200));
        let g = geometry(&params(Some(30), Some(70), Fit::Fill), 400, 200);
        assert_eq!((g.out_w, g.out_h), (30, 70));
    }

    #[test]
    fn junk_is_refused_without_panics() {
        let limits = Limits::default();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let p = params(Some(10), None, Fit::Cover);
        assert_eq!(
            render(b"hello, not an image", &p, &limits, deadline).map(|_| ()),
            Err(TransformError::NotAnImage)
        );
        let mut png = Vec::new();
        image::RgbImage::new(64, 64)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("png");
        for cut in [8, 20, 40, png.len() - 10] {
            assert!(render(&png[..cut], &p, &limits, deadline).is_err(), "{cut}");
        }
        assert!(render(&png, &p, &limits, deadline).is_ok());
    }
}
