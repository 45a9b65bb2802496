//! Bounds on how deeply a policy file nests, checked before anything recursive reads it.
//!
//! Cedar's parser turns its syntax tree into expressions recursively, one call chain per
//! bracket (and per `if`) level, and serializing, cloning and dropping a parsed policy recurse
//! once per level of its expression. Measured in a debug build on an 8 MiB stack: 200 nested
//! parentheses, or a chain of 1,000 `&&`, overflowed it and aborted the process; a sidecar
//! reloading such a file would have died with it. So:
//! - a `.cedar` or `.cedarschema` file whose brackets and `if`s nest more than
//!   [`MAX_NESTING`] deep, or a statement with more than [`MAX_OPERATORS`] operators, is
//!   refused before Cedar parses it ([`scan`]);
//! - a parsed policy whose condition is more than [`MAX_EXPR_DEPTH`] levels deep is refused
//!   before anything else reads it ([`expr_depth`]);
//! - loading and formatting run on a thread with [`LOAD_STACK`] bytes of stack
//!   ([`on_load_stack`]), in which the first two bounds leave a wide margin; a set that loaded
//!   is at most [`MAX_EXPR_DEPTH`] deep, which any thread can drop or evaluate (Cedar's
//!   evaluator and validator check the stack left themselves).

use cedar_policy_core::ast::{Expr, ExprKind};

use crate::source::{past_comment, past_string};

/// Deepest nesting of brackets (`(`, `[`, `{`) and `if` expressions in a file.
pub(crate) const MAX_NESTING: usize = 64;
/// Most operators (and brackets) in one statement: bounds the depth of what Cedar builds from
/// it before [`MAX_EXPR_DEPTH`] can be checked.
pub(crate) const MAX_OPERATORS: usize = 16_384;
/// Deepest expression a policy's condition may be (a chain of `n` `&&` or `||` is `n` deep).
/// Cedar's evaluator, which stops with an error when its thread's stack runs low, evaluated
/// 400 levels on a 2 MiB stack (a tokio worker's) in a release build, and not 700.
pub(crate) const MAX_EXPR_DEPTH: usize = 256;
/// Stack of the thread that loads or formats a set.
pub(crate) const LOAD_STACK: usize = 256 * 1024 * 1024;

/// Where a file first breaks a bound, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooDeep {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// Checks a policy or schema file's text against [`MAX_NESTING`] and [`MAX_OPERATORS`],
/// outside comments and string literals.
pub(crate) fn scan(text: &str) -> Result<(), TooDeep> {
    let bytes = text.as_bytes();
    let mut brackets = 0_usize;
    let mut ifs = 0_usize;
    let mut operators = 0_usize;
    let mut statement = 0_usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        i += 1;
        match b {
            b'/' if bytes.get(i) == Some(&b'/') => {
                i = past_comment(bytes, start);
                continue;
            }
            b'"' => {
                i = past_string(bytes, start);
                continue;
            }
            b';' => {
                (ifs, operators, statement) = (0, 0, i);
                continue;
            }
            b'(' | b'[' | b'{' => brackets += 1,
            b')' | b']' | b'}' => {
                brackets = brackets.saturating_sub(1);
                continue;
            }
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => {}
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    i += 1;
                }
                match bytes.get(start..i) {
                    Some(b"if") => ifs += 1,
                    Some(b"in" | b"has" | b"like" | b"is") => {}
                    _ => continue,
                }
            }
            _ => continue,
        }
        operators += 1;
        if brackets + ifs > MAX_NESTING {
            return Err(TooDeep {
                offset: start,
                message: format!(
                    "brackets and `if` expressions nest more than {MAX_NESTING} deep here"
                ),
            });
        }
        if operators > MAX_OPERATORS {
            return Err(TooDeep {
                offset: statement_start(text, statement),
                message: format!(
                    "this statement has more than {MAX_OPERATORS} operators; split it into several policies"
                ),
            });
        }
    }
    Ok(())
}

/// The first non-blank byte at or after `from`, for pointing at a statement.
fn statement_start(text: &str, from: usize) -> usize {
    text.get(from..)
        .and_then(|rest| rest.find(|c: char| !c.is_whitespace()))
        .map_or(from, |n| from + n)
}

/// How many levels deep `expr` is (a literal is 1), walked without recursion.
pub(crate) fn expr_depth<T>(expr: &Expr<T>) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1_usize)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let below = depth + 1;
        match e.expr_kind() {
            ExprKind::If {
                test_expr,
                then_expr,
                else_expr,
            } => stack.extend([test_expr, then_expr, else_expr].map(|e| (&**e, below))),
            ExprKind::And { left, right } | ExprKind::Or { left, right } => {
                stack.extend([left, right].map(|e| (&**e, below)));
            }
            ExprKind::BinaryApp { arg1, arg2, .. } => {
                stack.extend([arg1, arg2].map(|e| (&**e, below)));
            }
            ExprKind::UnaryApp { arg: expr, .. }
            | ExprKind::GetAttr { expr, .. }
            | ExprKind::HasAttr { expr, .. }
            | ExprKind::ExtHasAttr { expr, .. }
            | ExprKind::Like { expr, .. }
            | ExprKind::Is { expr, .. } => stack.push((expr, below)),
            ExprKind::ExtensionFunctionApp { args: exprs, .. } | ExprKind::Set(exprs) => {
                stack.extend(exprs.iter().map(|e| (e, below)));
            }
            ExprKind::Record(map) => stack.extend(map.values().map(|e| (e, below))),
            _ => {}
        }
    }
    deepest
}

/// Runs `f` on a thread with [`LOAD_STACK`] bytes of stack (reserved, not committed: only what
/// is used is backed by memory), or on this thread if none can be started.
pub(crate) fn on_load_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let slot = std::sync::Mutex::new(Some(f));
    let take = || slot.lock().ok().and_then(|mut f| f.take());
    let spawned = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("policy-load".to_owned())
            .stack_size(LOAD_STACK)
            .spawn_scoped(scope, || take().map(|f| f()))
            .ok()?;
        Some(
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    });
    match spawned.flatten() {
        Some(out) => out,
        // Not started: `f` is still in its slot.
        None => match take() {
            Some(f) => f(),
            None => unreachable!("the load thread returns what it ran"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(body: &str) -> String {
        format!("@id(\"p\")\npermit(principal, action, resource) when {{ {body} }};\n")
    }

    #[test]
    fn nesting_past_the_bound_is_found_where_it_happens() {
        let ok = policy(&format!(
            "{}true{}",
            "(".repeat(MAX_NESTING - 3),
            ")".repeat(MAX_NESTING - 3)
        ));
        assert_eq!(scan(&ok), Ok(()));
        let deep = policy(&format!("{}true{}", "(".repeat(200), ")".repeat(200)));
        let err = scan(&deep).unwrap_err();
        assert!(err.message.contains("nest more than 64"), "{}", err.message);
        assert_eq!(deep.as_bytes()[err.offset], b'(');
        // `if` nests without brackets.
        let ifs = policy(&format!(
            "{}true{}",
            "if true then true else ".repeat(100),
            ""
        ));
        assert!(scan(&ifs).is_err());
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let text = format!(
            "// {}\n{}",
            "(".repeat(500),
            policy(&format!(
                "\"{}\\\"{}\" == \"\"",
                "[".repeat(500),
                "{".repeat(500)
            ))
        );
        assert_eq!(scan(&text), Ok(()));
    }

    #[test]
    fn a_statement_with_too_many_operators_is_pointed_at() {
        let long = policy(&vec!["true"; MAX_OPERATORS].join(" && "));
        let text = format!("{}\n{long}", policy("true"));
        let err = scan(&text).unwrap_err();
        assert!(err.message.contains("operators"), "{}", err.message);
        assert!(text[err.offset..].starts_with("@id(\"p\")\npermit"));
        assert!(err.offset > 0);
        // The count starts again at each statement.
        let many = vec![policy(&vec!["true"; 1000].join(" && ")); 40].concat();
        assert_eq!(scan(&many), Ok(()));
    }

    /// The depth of the condition of the one policy in `text`.
    fn depth_of(text: &str) -> usize {
        let set: cedar_policy::PolicySet = text.parse().unwrap();
        let p = set.policies().next().unwrap();
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        expr_depth(core.template().non_scope_constraints().unwrap())
    }

    #[test]
    fn expression_depth_is_counted_without_recursion() {
        // A 5,000-deep expression is dropped recursively: on the load stack, as in a load.
        // (Cedar folds a chain of constants: `true && true` is parsed as `true`.)
        let chain = policy(&vec!["context has a"; 5000].join(" && "));
        let levels = on_load_stack(|| depth_of(&chain));
        assert!((4999..5010).contains(&levels), "{levels}");
        assert_eq!(depth_of(&policy("[1, [2, {a: [3]}]].contains(1)")), 6);
    }
}
