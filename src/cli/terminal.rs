//! What the CLI prints that others chose: recorded paths and bodies (`replay`), and what
//! an agent asked for (`requests`, `approve`). A caller chooses much of it; printing it
//! must not let them drive the reader's terminal.

use std::borrow::Cow;

/// Text for a terminal: what could make a terminal act (escape sequences, line breaks,
/// C1 controls) or reorder what is shown (bidirectional overrides) is written as
/// `\u{..}` instead.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match unsafe_char(c) {
                true => c.escape_unicode().to_string(),
                false => c.to_string(),
            })
            .collect(),
    )
}

/// As [`for_terminal`], keeping line breaks: for text shown over several lines (a
/// body as YAML), each of whose lines is made safe.
pub fn lines_for_terminal(s: &str) -> String {
    s.split('\n')
        .map(for_terminal)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Controls, and the invisible characters that reorder, join or break what is shown:
/// bidirectional marks and overrides, zero-width characters, line and paragraph
/// separators.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_shown_cannot_drive_the_terminal() {
        assert_eq!(for_terminal("pods nginx"), "pods nginx");
        let shown = for_terminal("/x/\u{1b}[2J\u{7}a\nb\u{9b}c\u{202e}d");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        for hidden in ['\u{200f}', '\u{2028}', '\u{200b}', '\u{feff}', '\u{2066}'] {
            let shown = for_terminal(&format!("a{hidden}b")).into_owned();
            assert!(!shown.contains(hidden), "{shown}");
        }
        let body = lines_for_terminal("kind: Pod\nname: \u{1b}]0;x\u{7}\n");
        assert_eq!(body, "kind: Pod\nname: \\u{1b}]0;x\\u{7}\n");
    }
}
