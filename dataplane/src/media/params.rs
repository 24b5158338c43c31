//! Transform parameters: parsed from the query, validated, and written back
//! in one canonical form (fixed order, defaults spelled out), which is what
//! URLs are signed over and what variants are keyed by — so `?h=3&w=4` and
//! `?width=4&height=3&fit=cover` are the same variant and the same
//! signature.

use std::collections::BTreeMap;

use crate::http::problem::{ApiError, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Fill the box, cropping what sticks out (at `gravity`).
    Cover,
    /// The whole image inside the box, letterboxed to its exact size.
    Contain,
    /// Stretch to the box.
    Fill,
    /// The whole image inside the box, no larger than the source.
    Inside,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gravity {
    Center,
    North,
    South,
    East,
    West,
    NorthEast,
    NorthWest,
    SouthEast,
    SouthWest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    /// Only in builds with the `avif` feature (see [`AVIF`]); elsewhere a
    /// request for it is a 400 saying it is not offered.
    Avif,
    /// From the request's `Accept` (AVIF when offered and accepted, else
    /// WebP when accepted, else JPEG).
    Auto,
}

/// Whether this build encodes AVIF (the `avif` feature: rav1e is a heavy
/// compile, so it is opt-in; docs/media.md has the measurements).
pub const AVIF: bool = cfg!(feature = "avif");

/// A transform, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub gravity: Gravity,
    pub format: Format,
    pub quality: u8,
}

pub const DEFAULT_QUALITY: u8 = 80;

impl Fit {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "cover" => Self::Cover,
            "contain" => Self::Contain,
            "fill" => Self::Fill,
            "inside" => Self::Inside,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Self::Cover => "cover",
            Self::Contain => "contain",
            Self::Fill => "fill",
            Self::Inside => "inside",
        }
    }
}

impl Gravity {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "center" | "centre" => Self::Center,
            "north" => Self::North,
            "south" => Self::South,
            "east" => Self::East,
            "west" => Self::West,
            "northeast" => Self::NorthEast,
            "northwest" => Self::NorthWest,
            "southeast" => Self::SouthEast,
            "southwest" => Self::SouthWest,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Self::Center => "center",
            Self::North => "north",
            Self::South => "south",
            Self::East => "east",
            Self::West => "west",
            Self::NorthEast => "northeast",
            Self::NorthWest => "northwest",
            Self::SouthEast => "southeast",
            Self::SouthWest => "southwest",
        }
    }
}

impl Format {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "jpeg" | "jpg" => Self::Jpeg,
            "png" => Self::Png,
            "webp" => Self::Webp,
            "avif" => Self::Avif,
            "auto" => Self::Auto,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Avif => "avif",
            Self::Auto => "auto",
        }
    }
}

/// The names of the query that carry a signature (not transform fields).
pub const SIGNATURE_PARAMS: [&str; 3] = [
    super::sign::EXPIRES,
    super::sign::KEY_ID,
    super::sign::SIGNATURE,
];

/// A render request's query, split into its parts.
#[derive(Debug, Clone, Default)]
pub struct RenderQuery {
    /// Transform fields by canonical name.
    pub fields: BTreeMap<&'static str, String>,
    pub preset: Option<String>,
    pub expires: Option<String>,
    pub key_id: Option<String>,
    pub signature: Option<String>,
}

fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter("query", name, message)
}

impl RenderQuery {
    /// Splits the query; unknown or repeated names are 400s (a signature
    /// covers exactly the fields given, so nothing may ride along).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut out = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = value.into_owned();
            let slot: &mut Option<String> = match name.as_ref() {
                super::sign::EXPIRES => &mut out.expires,
                super::sign::KEY_ID => &mut out.key_id,
                super::sign::SIGNATURE => &mut out.signature,
                "preset" => &mut out.preset,
                other => {
                    let canonical = match other {
                        "w" | "width" => "w",
                        "h" | "height" => "h",
                        "fit" => "fit",
                        "g" | "gravity" => "g",
                        "fmt" | "format" => "fmt",
                        "q" | "quality" => "q",
                        _ => return Err(invalid(other, "unknown transform parameter")),
                    };
                    if out.fields.insert(canonical, value).is_some() {
                        return Err(invalid(other, "given more than once"));
                    }
                    continue;
                }
            };
            if slot.replace(value).is_some() {
                return Err(invalid(&name, "given more than once"));
            }
        }
        Ok(out)
    }
}

/// One enumerated field: its default when absent, an error when unknown.
fn choice<T>(
    fields: &BTreeMap<&'static str, String>,
    name: &str,
    parse: fn(&str) -> Option<T>,
    default: T,
    message: &str,
    errors: &mut Vec<FieldError>,
) -> T {
    match fields.get(name) {
        None => default,
        Some(value) => parse(&value.to_ascii_lowercase()).unwrap_or_else(|| {
            errors.push(FieldError::new(format!("#/query/{name}"), message));
            default
        }),
    }
}

impl Params {
    /// Validates transform fields (`max_side` bounds width and height).
    pub fn from_fields(
        fields: &BTreeMap<&'static str, String>,
        max_side: u32,
    ) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let side = |name: &str, errors: &mut Vec<FieldError>| {
            fields.get(name).and_then(|v| match v.parse::<u32>() {
                Ok(n) if (1..=max_side).contains(&n) => Some(n),
                _ => {
                    errors.push(FieldError::new(
                        format!("#/query/{name}"),
                        format!("an integer from 1 to {max_side}"),
                    ));
                    None
                }
            })
        };
        let width = side("w", &mut errors);
        let height = side("h", &mut errors);
        let fit = choice(
            fields,
            "fit",
            Fit::parse,
            Fit::Cover,
            "one of cover, contain, fill, inside",
            &mut errors,
        );
        let gravity = choice(
            fields,
            "g",
            Gravity::parse,
            Gravity::Center,
            "one of center, north, south, east, west, northeast, northwest, southeast, southwest",
            &mut errors,
        );
        let format = choice(
            fields,
            "fmt",
            Format::parse,
            Format::Auto,
            if AVIF {
                "one of jpeg, png, webp, avif, auto"
            } else {
                "one of jpeg, png, webp, auto"
            },
            &mut errors,
        );
        if format == Format::Avif && !AVIF {
            // Named rather than "unknown": a client that asks for AVIF
            // learns it is not offered here and can fall back.
            errors.push(FieldError::new(
                "#/query/fmt",
                "avif is not offered by this data plane (built without AVIF encoding); \
                 use webp, jpeg, png or auto",
            ));
        }
        let quality = match fields.get("q").map(|v| v.parse::<u8>()) {
            None => DEFAULT_QUALITY,
            Some(Ok(q)) if (1..=100).contains(&q) => q,
            Some(_) => {
                errors.push(FieldError::new("#/query/q", "an integer from 1 to 100"));
                DEFAULT_QUALITY
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::BadRequest {
                kind: crate::http::problem::kind::INVALID_PARAMETER,
                detail: format!("{} transform parameter(s) are invalid", errors.len()),
                errors,
            });
        }
        Ok(Self {
            width,
            height,
            fit,
            gravity,
            format,
            quality,
        })
    }

    /// The canonical string: every field in a fixed order, defaults
    /// included, absent sides omitted.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        if let Some(w) = self.width {
            out.push_str(&format!("w={w}&"));
        }
        if let Some(h) = self.height {
            out.push_str(&format!("h={h}&"));
        }
        out.push_str(&format!(
            "fit={}&g={}&fmt={}&q={}",
            self.fit.name(),
            self.gravity.name(),
            self.format.name(),
            self.quality
        ));
        out
    }

    /// The canonical string as query pairs (for building URLs).
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(w) = self.width {
            pairs.push(("w", w.to_string()));
        }
        if let Some(h) = self.height {
            pairs.push(("h", h.to_string()));
        }
        pairs.push(("fit", self.fit.name().to_string()));
        pairs.push(("g", self.gravity.name().to_string()));
        pairs.push(("fmt", self.format.name().to_string()));
        pairs.push(("q", self.quality.to_string()));
        pairs
    }

    /// `format=auto` resolved from `Accept`: AVIF when this build encodes
    /// it and the client lists `image/avif` (with q > 0), else WebP when
    /// it lists `image/webp`, else JPEG. Wildcards (`image/*`, `*/*`) pick
    /// nothing new: browsers send them with formats they cannot show.
    pub fn resolve(&self, accept: Option<&str>) -> Self {
        let mut resolved = self.clone();
        if self.format == Format::Auto {
            let accepts = |wanted: &str| {
                accept.is_some_and(|a| {
                    a.split(',').any(|item| {
                        let mut parts = item.split(';');
                        let media = parts.next().unwrap_or("").trim();
                        let refused = parts.any(|p| {
                            p.trim()
                                .strip_prefix("q=")
                                .and_then(|q| q.trim().parse::<f32>().ok())
                                .is_some_and(|q| q <= 0.0)
                        });
                        media.eq_ignore_ascii_case(wanted) && !refused
                    })
                })
            };
            resolved.format = if AVIF && accepts("image/avif") {
                Format::Avif
            } else if accepts("image/webp") {
                Format::Webp
            } else {
                Format::Jpeg
            };
        }
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Result<Params, ApiError> {
        let q = RenderQuery::parse(Some(query))?;
        Params::from_fields(&q.fields, 4096)
    }

    #[test]
    fn canonical_forms_agree() {
        let a = params("h=3&w=4").expect("a");
        let b =
            params("width=4&height=3&fit=cover&gravity=center&format=auto&quality=80").expect("b");
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "w=4&h=3&fit=cover&g=center&fmt=auto&q=80");
        assert!(params("w=0").is_err());
        assert!(params("w=5000").is_err());
        assert!(params("fit=stretch").is_err());
        assert!(params("q=101").is_err());
        assert!(params("w=1&w=2").is_err());
        assert!(params("colour=red").is_err());
        assert_eq!(
            a.resolve(Some("image/avif,image/webp,*/*")).format,
            if AVIF { Format::Avif } else { Format::Webp }
        );
        assert_eq!(
            a.resolve(Some("image/avif;q=0,image/webp")).format,
            Format::Webp
        );
        assert_eq!(params("fmt=avif").is_ok(), AVIF);
        assert_eq!(a.resolve(Some("image/webp;q=0")).format, Format::Jpeg);
        assert_eq!(a.resolve(None).format, Format::Jpeg);
    }
}
