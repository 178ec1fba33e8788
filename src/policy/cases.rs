//! The test cases a policy file carries (`tests:`), compiled and run by `chaperone policy test`.

use std::collections::HashSet;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::compile::{Fault, Policy};
use super::eval::{authorize, Decision, BUILTIN_RULES};
use super::locate::Step;
use super::model::{self, TestRequest};
use super::{Action, Error};
use crate::identity::Subject;
use crate::request_info::{Attributes, RequestInfo};

/// One compiled test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub subject: Subject,
    pub info: RequestInfo,
    /// The query, for exec `command=` parameters.
    pub query: Option<String>,
    pub expect: Action,
    pub rule: Option<String>,
    /// 1-based line of the case in the policy file.
    pub line: usize,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub line: usize,
    pub expect: Action,
    pub expect_rule: Option<String>,
    pub decision: Decision,
    pub passed: bool,
}

impl Policy {
    /// Runs the embedded cases. A case compares its `expect` (and `rule`) with the decision's
    /// reported action and rule, so that an audit-mode rule is tested as it would enforce.
    pub fn run_tests(&self) -> Vec<Outcome> {
        self.cases
            .iter()
            .map(|case| {
                let decision = authorize(self, &case.subject, &case.info, case.query.as_deref());
                let passed = decision.action() == case.expect
                    && case.rule.as_deref().is_none_or(|r| r == decision.rule());
                Outcome {
                    name: case.name.clone(),
                    line: case.line,
                    expect: case.expect,
                    expect_rule: case.rule.clone(),
                    decision,
                    passed,
                }
            })
            .collect()
    }
}

pub(crate) fn compile_case(
    fault: &Fault<'_>,
    i: usize,
    case: model::TestCase,
    rules: &HashSet<&str>,
    line: usize,
) -> Result<Case, Error> {
    let path = |field: &'static str| [Step::Key("tests"), Step::Index(i), Step::Key(field)];
    let s = &case.subject;
    if s.user.is_some() && s.service_account.is_some() {
        return Err(fault.at(&path("subject"), "give user or serviceAccount, not both"));
    }
    if s.user.is_none() && s.service_account.is_none() && s.groups.is_empty() {
        return Err(fault.at(&path("subject"), "needs a user, a serviceAccount or groups"));
    }
    let user = match (&s.user, &s.service_account) {
        (Some(u), _) => u.0.clone(),
        (None, Some(sa)) => sa.user(),
        (None, None) => String::new(),
    };
    let subject = Subject {
        user,
        groups: s.groups.iter().map(|g| g.0.clone()).collect(),
        ..Subject::default()
    };
    if let Some(rule) = &case.rule {
        if !rules.contains(rule.0.as_str()) && !BUILTIN_RULES.contains(&rule.0.as_str()) {
            return Err(fault.at(
                &path("rule"),
                format_args!("names no rule of this policy and no built-in: {:?}", rule.0),
            ));
        }
    }
    let (info, query) = match case.request {
        TestRequest::Line(line) => (line.info, line.query),
        TestRequest::Attributes(a) => {
            attributes(a).map_err(|message| fault.at(&path("request"), message))?
        }
    };
    Ok(Case {
        name: case.name.0,
        subject,
        info,
        query,
        expect: case.expect,
        rule: case.rule.map(|r| r.0),
        line,
    })
}

/// A request from its attributes, as `request_info::resolve` would have resolved it.
fn attributes(a: model::RequestAttributes) -> Result<(RequestInfo, Option<String>), String> {
    if a.verb == model::Verb::All || a.verb.is_http_only() {
        return Err(format!(
            "verb {:?} is not the verb of a resource request (use a \"METHOD /path\" request for non-resource URLs)",
            a.verb.as_str()
        ));
    }
    let (resource, subresource) = match a.resource.0.split_once('/') {
        Some(_) if !a.subresource.is_empty() => {
            return Err("give the subresource in `resource` or in `subresource`, not both".into())
        }
        Some((r, s)) => (r.to_owned(), s.to_owned()),
        None => (a.resource.0, a.subresource),
    };
    let query = (!a.command.is_empty()).then(|| {
        a.command
            .iter()
            .map(|arg| format!("command={}", utf8_percent_encode(arg, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let info = RequestInfo::from_attributes(Attributes {
        verb: a.verb.as_str(),
        group: &a.api_group,
        version: "",
        namespace: &a.namespace,
        resource: &resource,
        subresource: &subresource,
        name: &a.name,
    });
    Ok((info, query))
}
