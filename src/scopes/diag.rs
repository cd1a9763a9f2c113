//! Diagnostics about a rule file. Every one names a file and a line, because
//! an operator fixes a rule file in an editor, not in a debugger.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}:{}: {tag}{}", self.file, self.line, self.message)
    }
}

/// Why a rule file was refused: at least one error, in file order.
#[derive(Debug)]
pub struct RuleErrors(pub Vec<Diagnostic>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Collects diagnostics while a file is read; turns byte offsets into lines.
pub(crate) struct Sink<'a> {
    file: &'a str,
    line_starts: Vec<usize>,
    pub(crate) items: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, src: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Sink {
            file,
            line_starts,
            items: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    pub(crate) fn error_at_line(&mut self, line: usize, message: impl Into<String>) {
        self.push(line, message.into(), Severity::Error);
    }

    pub(crate) fn warn_at_line(&mut self, line: usize, message: impl Into<String>) {
        self.push(line, message.into(), Severity::Warning);
    }

    pub(crate) fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.error_at_line(self.line_of(offset), message);
    }

    fn push(&mut self, line: usize, message: String, severity: Severity) {
        self.items.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            message,
            severity,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// Splits into (errors, warnings), each sorted by line.
    pub(crate) fn finish(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        self.items.sort_by_key(|d| d.line);
        self.items
            .into_iter()
            .partition(|d| d.severity == Severity::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines() {
        let sink = Sink::new("f", "a\nbc\n\nd");
        assert_eq!(sink.line_of(0), 1);
        assert_eq!(sink.line_of(1), 1);
        assert_eq!(sink.line_of(2), 2);
        assert_eq!(sink.line_of(5), 3);
        assert_eq!(sink.line_of(6), 4);
    }

    #[test]
    fn errors_display_one_per_line() {
        let mut sink = Sink::new("scopes.toml", "x\ny\n");
        sink.error(2, "second");
        sink.error(0, "first");
        sink.warn_at_line(2, "meh");
        let (errors, warnings) = sink.finish();
        assert_eq!(
            RuleErrors(errors).to_string(),
            "scopes.toml:1: first\nscopes.toml:2: second"
        );
        assert_eq!(warnings[0].to_string(), "scopes.toml:2: warning: meh");
    }
}
