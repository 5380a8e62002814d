//! The Sigma condition grammar: selection names, `and`, `or`, `not`, parentheses,
//! `1 of NAME*`, `all of NAME*`, `1 of them`, `all of them`.
//!
//! Precedence from loosest to tightest: `or`, `and`, `not`. Names are resolved to selection
//! indexes when the rule is loaded, so evaluation never looks a name up.

/// A parsed condition, with selections referred to by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    Selection(usize),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
}

/// A problem in a condition, `offset` characters into its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionError {
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    Word(&'a str),
}

const KEYWORDS: &[&str] = &["and", "or", "not", "of", "them", "all", "1"];

/// Whether `name` may name a selection: letters, digits, `_`, `-` and `.` (as Sigma allows), and
/// not a keyword.
pub(crate) fn is_valid_selection_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(is_name_char) && !KEYWORDS.contains(&name)
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token<'_>)>, ConditionError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let column = |byte: usize| text[..byte].chars().count();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                tokens.push((column(start), if c == '(' { Token::Open } else { Token::Close }));
            }
            c if is_name_char(c) || c == '*' => {
                let mut end = start;
                while let Some(&(at, c)) = chars.peek() {
                    if is_name_char(c) || c == '*' {
                        end = at + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push((column(start), Token::Word(&text[start..end])));
            }
            '|' => {
                return Err(ConditionError {
                    offset: column(start),
                    message: "aggregations (`| count() ...`) are not supported in a condition".to_owned(),
                    hint: Some("count matches with the rule's `threshold:` (count, within, group_by)".to_owned()),
                })
            }
            other => {
                return Err(ConditionError {
                    offset: column(start),
                    message: format!("unexpected character `{other}` in condition"),
                    hint: Some("conditions use selection names, and, or, not, parentheses, `1 of NAME*` and `all of them`".to_owned()),
                })
            }
        }
    }
    Ok(tokens)
}

/// Deeper nesting of parentheses and `not` than this is refused, so that evaluation's recursion stays shallow.
const MAX_NESTING: usize = 32;

struct ConditionParser<'a, 'n> {
    tokens: Vec<(usize, Token<'a>)>,
    next: usize,
    depth: usize,
    end: usize,
    names: &'n [&'n str],
}

/// Parses `text` and resolves names against `names` (the selections, in file order).
pub(crate) fn parse_condition(text: &str, names: &[&str]) -> Result<Condition, ConditionError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(ConditionError {
            offset: 0,
            message: "empty condition".to_owned(),
            hint: Some("name the selections that must match, e.g. `selection and not filter`".to_owned()),
        });
    }
    let mut parser = ConditionParser { tokens, next: 0, depth: 0, end: text.chars().count(), names };
    let condition = parser.or()?;
    if let Some((offset, token)) = parser.tokens.get(parser.next) {
        let message = match token {
            Token::Close => "unmatched `)`".to_owned(),
            Token::Open => "unexpected `(`; join expressions with `and` or `or`".to_owned(),
            Token::Word(word) => {
                format!("unexpected `{word}`; join expressions with `and` or `or`")
            }
        };
        return Err(ConditionError { offset: *offset, message, hint: None });
    }
    Ok(condition)
}

impl<'a> ConditionParser<'a, '_> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.next).map(|(_, token)| token)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(offset, _)| *offset)
    }

    fn error(&self, message: String, hint: Option<String>) -> ConditionError {
        ConditionError { offset: self.offset(), message, hint }
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(word)) if *word == keyword) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut terms = vec![self.and()?];
        while self.keyword("or") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Condition::Or(terms) })
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut terms = vec![self.unary()?];
        while self.keyword("and") {
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Condition::And(terms) })
    }

    fn unary(&mut self) -> Result<Condition, ConditionError> {
        if self.depth >= MAX_NESTING {
            return Err(self.error(format!("the condition nests deeper than {MAX_NESTING} levels"), None));
        }
        self.depth += 1;
        let result = if self.keyword("not") {
            self.unary().map(|inner| Condition::Not(Box::new(inner)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        result
    }

    fn primary(&mut self) -> Result<Condition, ConditionError> {
        let offset = self.offset();
        match self.peek().cloned() {
            None => {
                Err(self.error("the condition ends where a selection name was expected".to_owned(), None))
            }
            Some(Token::Open) => {
                self.next += 1;
                let inner = self.or()?;
                if matches!(self.peek(), Some(Token::Close)) {
                    self.next += 1;
                    Ok(inner)
                } else {
                    Err(ConditionError {
                        offset,
                        message: "unclosed `(`".to_owned(),
                        hint: Some("add the matching `)`".to_owned()),
                    })
                }
            }
            Some(Token::Close) => {
                Err(self.error("unexpected `)` where a selection name was expected".to_owned(), None))
            }
            Some(Token::Word(word)) => {
                self.next += 1;
                match word {
                    "1" | "all" | "any" => self.quantified(word, offset),
                    word if word.chars().all(|c| c.is_ascii_digit()) => Err(ConditionError {
                        offset,
                        message: format!("`{word} of` is not supported"),
                        hint: Some("use `1 of` or `all of`".to_owned()),
                    }),
                    "and" | "or" | "of" | "them" => Err(ConditionError {
                        offset,
                        message: format!("unexpected `{word}` where a selection name was expected"),
                        hint: None,
                    }),
                    name if name.contains('*') => Err(ConditionError {
                        offset,
                        message: format!("wildcard `{name}` needs a quantifier"),
                        hint: Some(format!("write `1 of {name}` or `all of {name}`")),
                    }),
                    name => self.selection(name, offset).map(Condition::Selection),
                }
            }
        }
    }

    fn selection(&self, name: &str, offset: usize) -> Result<usize, ConditionError> {
        self.names.iter().position(|candidate| *candidate == name).ok_or_else(|| {
            let defined = self.names.join(", ");
            let hint = match crate::diagnostic::closest(name, self.names.iter().copied()) {
                Some(guess) => format!("did you mean `{guess}`? defined: {defined}"),
                None => format!("defined: {defined}"),
            };
            ConditionError {
                offset,
                message: format!("condition names `{name}`, which is not a selection of this rule"),
                hint: Some(hint),
            }
        })
    }

    fn quantified(&mut self, quantifier: &str, offset: usize) -> Result<Condition, ConditionError> {
        if quantifier == "any" {
            return Err(ConditionError {
                offset,
                message: "`any of` is not Sigma".to_owned(),
                hint: Some("write `1 of`".to_owned()),
            });
        }
        if !self.keyword("of") {
            return Err(self.error(
                format!("expected `of` after `{quantifier}`"),
                Some(format!("e.g. `{quantifier} of selection_*`")),
            ));
        }
        let target_offset = self.offset();
        let Some(Token::Word(target)) = self.peek().cloned() else {
            return Err(
                self.error(format!("expected a name pattern or `them` after `{quantifier} of`"), None)
            );
        };
        self.next += 1;
        let indexes: Vec<usize> = if target == "them" {
            (0..self.names.len()).filter(|&i| !self.names[i].starts_with('_')).collect()
        } else if target.contains('*') {
            (0..self.names.len()).filter(|&i| glob_matches(target, self.names[i])).collect()
        } else {
            vec![self.selection(target, target_offset)?]
        };
        if indexes.is_empty() {
            return Err(ConditionError {
                offset: target_offset,
                message: format!("`{target}` matches no selection"),
                hint: Some(format!("defined: {}", self.names.join(", "))),
            });
        }
        let terms: Vec<Condition> = indexes.into_iter().map(Condition::Selection).collect();
        Ok(match (quantifier, terms.len()) {
            (_, 1) => terms.into_iter().next().unwrap_or(Condition::And(Vec::new())),
            ("all", _) => Condition::And(terms),
            _ => Condition::Or(terms),
        })
    }
}

/// `*` matches any run of characters in a selection name pattern.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().unwrap_or((&"", &[]));
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

impl Condition {
    /// Evaluates the condition given a function that says whether selection `i` matches.
    pub fn evaluate(&self, selection: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Self::Selection(index) => selection(*index),
            Self::Not(inner) => !inner.evaluate(selection),
            Self::And(terms) => terms.iter().all(|term| term.evaluate(selection)),
            Self::Or(terms) => terms.iter().any(|term| term.evaluate(selection)),
        }
    }

    /// The selections named anywhere in the condition, in order of first appearance.
    pub fn selections(&self, out: &mut Vec<usize>) {
        match self {
            Self::Selection(index) => {
                if !out.contains(index) {
                    out.push(*index);
                }
            }
            Self::Not(inner) => inner.selections(out),
            Self::And(terms) | Self::Or(terms) => terms.iter().for_each(|term| term.selections(out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["selection", "filter_a", "filter_b", "_helper", "filter.main"];

    fn parse(text: &str) -> Result<Condition, ConditionError> {
        parse_condition(text, NAMES)
    }

    fn error(text: &str) -> (usize, String) {
        let error = parse(text).unwrap_err();
        (error.offset, error.message)
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        use Condition::{And, Not, Or, Selection};
        assert_eq!(
            parse("selection and not filter_a or filter_b").unwrap(),
            Or(vec![And(vec![Selection(0), Not(Box::new(Selection(1)))]), Selection(2)])
        );
        assert_eq!(
            parse("selection and (filter_a or filter_b)").unwrap(),
            And(vec![Selection(0), Or(vec![Selection(1), Selection(2)])])
        );
    }

    #[test]
    fn quantifiers_expand_patterns_and_them() {
        use Condition::{And, Or, Selection};
        assert_eq!(parse("1 of filter_*").unwrap(), Or(vec![Selection(1), Selection(2)]));
        assert_eq!(parse("all of filter_*").unwrap(), And(vec![Selection(1), Selection(2)]));
        assert_eq!(
            parse("all of them").unwrap(),
            And(vec![Selection(0), Selection(1), Selection(2), Selection(4)])
        );
        assert_eq!(parse("1 of sel*").unwrap(), Selection(0));
        assert_eq!(parse("1 of *_b").unwrap(), Selection(2));
        // Sigma's selection names may have dots; `them` leaves out names starting with `_`.
        assert_eq!(parse("selection and not filter.main").unwrap(), And(vec![Selection(0), Condition::Not(Box::new(Selection(4)))]));
        assert_eq!(parse("1 of filter.*").unwrap(), Selection(4));
        assert_eq!(parse("1 of them").unwrap(), Or(vec![Selection(0), Selection(1), Selection(2), Selection(4)]));
        assert_eq!(parse("1 of _*").unwrap(), Selection(3));
    }

    #[test]
    fn errors_point_at_the_offending_word() {
        assert_eq!(
            error("selection and not fliter_a"),
            (18, "condition names `fliter_a`, which is not a selection of this rule".to_owned())
        );
        assert_eq!(error("selection and (filter_a"), (14, "unclosed `(`".to_owned()));
        assert_eq!(
            error("selection filter_a"),
            (10, "unexpected `filter_a`; join expressions with `and` or `or`".to_owned())
        );
        assert_eq!(
            error("selection and"),
            (13, "the condition ends where a selection name was expected".to_owned())
        );
        assert_eq!(error("1 of nothing*"), (5, "`nothing*` matches no selection".to_owned()));
        assert_eq!(error("2 of them"), (0, "`2 of` is not supported".to_owned()));
        assert_eq!(
            error("selection | count() > 5"),
            (10, "aggregations (`| count() ...`) are not supported in a condition".to_owned())
        );
        assert_eq!(error("selection & filter_a"), (10, "unexpected character `&` in condition".to_owned()));
        assert_eq!(error("filter_*"), (0, "wildcard `filter_*` needs a quantifier".to_owned()));
        assert_eq!(error("selection)"), (9, "unmatched `)`".to_owned()));
        assert_eq!(error("  "), (0, "empty condition".to_owned()));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}selection{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(error(&deep), (32, "the condition nests deeper than 32 levels".to_owned()));
        assert_eq!(
            error(&"not ".repeat(10_000)),
            (128, "the condition nests deeper than 32 levels".to_owned())
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            parse("selecton").unwrap_err().hint.unwrap(),
            "did you mean `selection`? defined: selection, filter_a, filter_b, _helper, filter.main"
        );
    }
}
