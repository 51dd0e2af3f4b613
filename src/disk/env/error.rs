//! [`EnvError`], the one error of reading and checking descriptions, and the
//! helper building its most common variant. Both readers, the checks and the
//! grub.cfg writer report through it, so it sits apart from all of them; its
//! messages name the description and the field as the description spells it.

/// A description that cannot be read, or that kacast cannot deploy.
///
/// Every variant names where the problem is (the description file, or the
/// environment by name for [`Environment::check`]) and, when there is one, the
/// field, spelled as in the description (`image.compression`,
/// `postinstalls[0].archive`).
///
/// [`Environment::check`]: super::Environment::check
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The description file could not be read.
    #[error("{origin}: cannot read the environment description: {message}")]
    Read { origin: String, message: String },
    /// Not YAML at all (or not a mapping at its top).
    #[error("{origin}: not a kaenv3 YAML environment description: {message}")]
    Syntax { origin: String, message: String },
    /// A field is missing, has the wrong type or a value kacast does not accept.
    #[error("{origin}: field '{field}': {problem}")]
    Field { origin: String, field: String, problem: String },
    /// A line of an old `key : value` description.
    #[error("{origin}, line {line}: {problem}")]
    Line { origin: String, line: usize, problem: String },
}

pub(super) fn field_error(origin: &str, field: &str, problem: impl Into<String>) -> EnvError {
    EnvError::Field { origin: origin.to_string(), field: field.to_string(), problem: problem.into() }
}
