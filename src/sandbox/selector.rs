//! Label selectors (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`,
//! `a<1`) and field selectors (`path=v`, `path==v`, `path!=v` over any dotted path).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    NotExists,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas outside parentheses (`a in (x,y),b` is two terms).
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!(
                "unable to parse requirement: unbalanced parentheses in {s:?}"
            ));
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unbalanced parentheses in {s:?}"
        ));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn check_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {key:?}"
        ))
    }
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let t = term.trim();
    if let Some(key) = t.strip_prefix('!') {
        return Ok(Requirement {
            key: check_key(key.trim())?,
            op: Op::NotExists,
            values: vec![],
        });
    }
    if let Some(open) = t.find('(') {
        let close = t
            .rfind(')')
            .filter(|c| *c == t.len() - 1)
            .ok_or_else(|| format!("unable to parse requirement: {t:?}"))?;
        let head: Vec<&str> = t[..open].split_whitespace().collect();
        let op = match head.as_slice() {
            [_, "in"] => Op::In,
            [_, "notin"] => Op::NotIn,
            _ => {
                return Err(format!(
                    "unable to parse requirement: found '{}', expected: in, notin",
                    t
                ))
            }
        };
        let values = t[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        return Ok(Requirement {
            key: check_key(head[0])?,
            op,
            values,
        });
    }
    for (sym, op) in [
        ("!=", Op::NotEq),
        ("==", Op::Eq),
        ("=", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
    ] {
        if let Some((k, v)) = t.split_once(sym) {
            return Ok(Requirement {
                key: check_key(k.trim())?,
                op,
                values: vec![v.trim().to_string()],
            });
        }
    }
    Ok(Requirement {
        key: check_key(t)?,
        op: Op::Exists,
        values: vec![],
    })
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let reqs = split_terms(s)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { reqs })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.reqs.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            let num = |s: &str| s.parse::<i64>().ok();
            match r.op {
                Op::Eq => v == r.values.first().map(String::as_str),
                Op::NotEq => v != r.values.first().map(String::as_str),
                Op::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn => !v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Gt => matches!((v.and_then(num), r.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b),
                Op::Lt => matches!((v.and_then(num), r.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b),
            }
        })
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    /// (dotted path, negated, value)
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, neg, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            reqs.push((path.trim().to_string(), neg, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// The selected `metadata.name`, if the selector pins one (single-object watches).
    pub fn name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(p, neg, _)| p == "metadata.name" && !neg)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, neg, want)| {
            let got = path.split('.').try_fold(obj, |cur, seg| cur.get(seg));
            let got = match got {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (got == *want) != *neg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "front", "n": "3"}},
               "spec": {"nodeName": "node1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors() {
        let p = pod();
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("app,tier=front", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("env!=prod", true),
            ("app in (api),tier", false),
            ("n>2", true),
            ("n<2", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in (web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = pod();
        for (sel, want) in [
            ("metadata.name=p", true),
            ("metadata.name==q", false),
            ("metadata.namespace!=ns", false),
            ("status.phase=Running,spec.nodeName=node1", true),
            ("spec.nodeName!=node1", false),
            ("spec.missing=", true),
        ] {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert_eq!(
            FieldSelector::parse("metadata.name=p").unwrap().name(),
            Some("p")
        );
        assert!(FieldSelector::parse("bogus").is_err());
    }
}
