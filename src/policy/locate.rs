//! Finds the line and column of a field in the policy text, for errors found after parsing.
//!
//! serde_yaml 0.9 keeps no positions once a value is deserialized, so a check across fields
//! (found in `compile`) re-reads the text: it walks block-style YAML by indentation along a
//! path like `spec.rules[3].commands`. Flow style (`{...}`, `[...]`) is not walked into; the
//! walk then stops at the deepest key it found, which still points near the fault.

/// A path step: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// One significant line: its indentation, its content, and its 1-based number.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

/// The 1-based `(line, column)` of the last step of `path` that could be found, `(1, 1)` if
/// none could.
pub fn locate(text: &str, path: &[Step<'_>]) -> (usize, usize) {
    walk(text, path).1
}

/// The 1-based line of every item of the block sequence at `path` (empty if there is none),
/// in one pass: compiling a policy of many rules must not re-read the text per rule.
pub fn item_lines(text: &str, path: &[Step<'_>]) -> Vec<usize> {
    let (lines, _) = walk(text, path);
    let base = lines.first().map_or(0, |l| l.indent);
    lines
        .iter()
        .filter(|l| l.indent == base && l.text.starts_with('-'))
        .map(|l| l.number)
        .collect()
}

/// The lines of the value at the end of `path` (as far as it could be followed), and the
/// position of the last step found.
fn walk<'t>(text: &'t str, path: &[Step<'_>]) -> (Vec<Line<'t>>, (usize, usize)) {
    let mut lines: Vec<Line<'_>> = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let text = raw.trim_start();
            let significant = !text.is_empty() && !text.starts_with('#') && text != "---";
            significant.then(|| Line {
                number: i + 1,
                indent: raw.len() - text.len(),
                text,
            })
        })
        .collect();
    let mut found = (1, 1);
    for step in path {
        let Some(first) = lines.first().copied() else {
            lines.clear();
            break;
        };
        let base = first.indent;
        match *step {
            Step::Key(key) => {
                let hit = lines
                    .iter()
                    .position(|l| l.indent == base && is_key(l.text, key));
                let Some(at) = hit else { break };
                let line = lines[at];
                found = (line.number, line.indent + 1);
                // The value: following lines indented deeper, or a sequence at the same indent.
                let rest = &lines[at + 1..];
                let end = rest
                    .iter()
                    .position(|l| l.indent < base || (l.indent == base && !l.text.starts_with('-')))
                    .unwrap_or(rest.len());
                lines = rest[..end].to_vec();
            }
            Step::Index(index) => {
                let items: Vec<usize> = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.indent == base && l.text.starts_with('-'))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&start) = items.get(index) else {
                    break;
                };
                let end = items.get(index + 1).copied().unwrap_or(lines.len());
                let mut item = lines[start..end].to_vec();
                // `- key: v` puts `key` where the item's other keys are: strip the dash.
                let head = item[0];
                let after = head.text[1..].trim_start();
                found = (head.number, head.indent + 1);
                if after.is_empty() {
                    item.remove(0);
                } else {
                    item[0] = Line {
                        number: head.number,
                        indent: head.indent + (head.text.len() - after.len()),
                        text: after,
                    };
                    found = (head.number, item[0].indent + 1);
                }
                lines = item;
            }
        }
    }
    (lines, found)
}

/// Whether a line starts the mapping key `key` (plain or quoted).
fn is_key(text: &str, key: &str) -> bool {
    [
        text.strip_prefix(key),
        text.strip_prefix('"')
            .and_then(|t| t.strip_prefix(key))
            .and_then(|t| t.strip_prefix('"')),
        text.strip_prefix('\'')
            .and_then(|t| t.strip_prefix(key))
            .and_then(|t| t.strip_prefix('\'')),
    ]
    .into_iter()
    .flatten()
    .any(|rest| rest.trim_start().starts_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
apiVersion: chaperone.dev/v1alpha1
spec:
  # comment
  rules:
  - name: a
    verbs: [get]
  -
    name: b
    resources: [pods]
    commands:
    - [ps]
tests:
  - name: t
    expect: allow
";

    #[test]
    fn finds_keys_by_path() {
        use Step::*;
        let cases: &[(&[Step], (usize, usize))] = &[
            (&[Key("spec")], (2, 1)),
            (&[Key("spec"), Key("rules")], (4, 3)),
            (&[Key("spec"), Key("rules"), Index(0)], (5, 5)),
            (&[Key("spec"), Key("rules"), Index(0), Key("verbs")], (6, 5)),
            (&[Key("spec"), Key("rules"), Index(1), Key("name")], (8, 5)),
            (
                &[Key("spec"), Key("rules"), Index(1), Key("commands")],
                (10, 5),
            ),
            (
                &[Key("spec"), Key("rules"), Index(1), Key("missing")],
                (7, 3),
            ),
            (&[Key("spec"), Key("rules"), Index(5)], (4, 3)),
            (&[Key("tests"), Index(0), Key("expect")], (14, 5)),
            (&[Key("nothing")], (1, 1)),
        ];
        for (path, want) in cases {
            assert_eq!(locate(TEXT, path), *want, "{path:?}");
        }
        assert_eq!(item_lines(TEXT, &[Key("spec"), Key("rules")]), [5, 7]);
        assert_eq!(item_lines(TEXT, &[Key("tests")]), [13]);
        assert!(item_lines(TEXT, &[Key("nothing")]).is_empty());
    }
}
