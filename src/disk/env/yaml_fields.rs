//! Reading one mapping of a kaenv3 YAML description: [`Fields`] gets text,
//! numbers and booleans with kaenv3's leniency (a numeric `version` is text, an
//! empty string is absent, `0x83` is a number), names the field's full path
//! (`image.kind`, `postinstalls[0].archive`) in its errors and warns about keys
//! kaenv3 does not know. It is kept apart from the reader of the whole
//! description, which then only says which fields it wants.

use serde_yaml::{Mapping, Value};
use tracing::warn;

use super::error::{field_error, EnvError};

/// Reading one mapping of a kaenv3 description, with errors naming the field's
/// full path.
pub(super) struct Fields<'a> {
    origin: &'a str,
    map: &'a Mapping,
    /// `""` at the top, `image.`, `postinstalls[0].`…
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(super) fn new(
        origin: &'a str,
        value: &'a Value,
        field: &str,
        prefix: String,
    ) -> Result<Self, EnvError> {
        match value {
            Value::Mapping(map) => Ok(Fields { origin, map, prefix }),
            other => Err(field_error(origin, field, format!("should be a mapping, not {}", kind_of(other)))),
        }
    }

    pub(super) fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn err(&self, key: &str, problem: impl Into<String>) -> EnvError {
        field_error(self.origin, &self.path(key), problem)
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Text; numbers are taken as their text (a `version: 2023040314`, a
    /// numeric `name`). Empty text is absent, as kaenv3 treats `kernel_params: ''`.
    pub(super) fn text(&self, key: &str) -> Result<Option<String>, EnvError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.err(key, format!("should be text, not {}", kind_of(other)))),
        }
    }

    pub(super) fn required_text(&self, key: &str) -> Result<String, EnvError> {
        self.text(key)?.ok_or_else(|| self.err(key, "missing (it is mandatory)"))
    }

    pub(super) fn boolean(&self, key: &str) -> Result<Option<bool>, EnvError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(key, format!("should be true or false, not {}", kind_of(other)))),
        }
    }

    /// A non-negative number; kaenv3 writes them in decimal, YAML also reads
    /// `0x83`, and a quoted `"0x83"` is accepted too.
    pub(super) fn number(&self, key: &str) -> Result<Option<u32>, EnvError> {
        let bad = |shown: String| self.err(key, format!("{shown} is not a number from 0 to {}", u32::MAX));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) => Ok(Some(v)),
                None => Err(bad(n.to_string())),
            },
            Some(Value::String(s)) => parse_number(s).map(Some).ok_or_else(|| bad(format!("'{s}'"))),
            Some(other) => Err(self.err(key, format!("should be a number, not {}", kind_of(other)))),
        }
    }

    /// Warns about keys outside `known`, as kaenv3 does ("Unused field"): a
    /// typo is visible, and fields of newer Kadeploy versions do not fail.
    pub(super) fn warn_unknown(&self, known: &[&str]) {
        for key in self.map.keys() {
            let name = match key {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            if !known.contains(&name.as_str()) {
                warn!("{}: field '{}' is not a kaenv3 field, ignored", self.origin, self.path(&name));
            }
        }
    }
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `131`, `0x83`.
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
