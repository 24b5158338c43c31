//! SQL identifiers that are safe to splice into DDL.
//!
//! DDL (`CREATE DATABASE`, `CREATE ROLE`) cannot take bind parameters, so names
//! are validated to a strict alphabet and always double-quoted.

use std::fmt;

/// A validated identifier: `[a-z_][a-z0-9_]{0,62}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid SQL identifier {0:?}: expected [a-z_][a-z0-9_]{{0,62}}")]
pub struct InvalidIdent(pub String);

impl Ident {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidIdent> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(Self(name))
        } else {
            Err(InvalidIdent(name))
        }
    }

    /// The bare name, for use as a bind parameter (e.g. `WHERE datname = $1`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quoted form, for DDL.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Escapes a string literal for DDL that cannot take bind parameters
/// (e.g. `COMMENT ON DATABASE`, `PASSWORD '...'`).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_derived_names_and_refuses_injection() {
        assert!(Ident::new("t_0a1b2c").is_ok());
        for bad in [
            "",
            "T_upper",
            "x\"; DROP DATABASE y; --",
            "1abc",
            &"a".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
