//! Problems found in rule files, each tied to a `FILE:LINE:COLUMN` and, where we can, a hint.

use std::fmt;

/// A place in a source text: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    #[must_use]
    pub fn new(line: usize, column: usize) -> Self {
        Self { line, column }
    }

    /// The position `offset` characters further along the same line.
    #[must_use]
    pub fn shifted(self, offset: usize) -> Self {
        Self { line: self.line, column: self.column + offset }
    }
}

/// One problem in one file. Displayed as `FILE:LINE:COLUMN: message` and, on the next line, `  hint: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub position: Position,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &str, position: Position, message: impl Into<String>) -> Self {
        Self { file: file.to_owned(), position, message: message.into(), hint: None }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sorts diagnostics by file, line and column, so that reports read top to bottom.
    pub fn sort(diagnostics: &mut [Diagnostic]) {
        diagnostics.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.position.line, self.position.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file while a validator walks it.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub file: &'a str,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a str) -> Self {
        Self { file, diagnostics: Vec::new() }
    }

    pub fn error(&mut self, position: Position, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(self.file, position, message));
    }

    pub fn error_with_hint(
        &mut self,
        position: Position,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic::new(self.file, position, message).with_hint(hint));
    }
}

/// The closest of `candidates` to `word` if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters, case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A hint naming the valid choices, led by the likely intended one.
pub(crate) fn choices_hint(word: &str, choices: &[&str]) -> String {
    match closest(word, choices.iter().copied()) {
        Some(guess) => format!("did you mean `{guess}`? valid: {}", choices.join(", ")),
        None => format!("valid: {}", choices.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_the_hint_on_its_own_line() {
        let diagnostic = Diagnostic::new("a.yaml", Position::new(3, 5), "unknown field `tittle`")
            .with_hint("did you mean `title`?");
        assert_eq!(
            diagnostic.to_string(),
            "a.yaml:3:5: unknown field `tittle`\n  hint: did you mean `title`?"
        );
    }

    #[test]
    fn closest_finds_typos_but_not_strangers() {
        assert_eq!(closest("tittle", ["id", "title", "enabled"]), Some("title"));
        assert_eq!(closest("contians", ["contains", "startswith"]), Some("contains"));
        assert_eq!(closest("zzz", ["contains", "startswith"]), None);
    }
}
