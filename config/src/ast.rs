//! PowerMTA-style lexer and parser: text → tree of directives and blocks, each with its
//! file:line. No file system access: `include` goes through a caller-supplied loader.

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::Arc;

/// How deep `include` may nest before we call it a cycle.
pub const INCLUDE_DEPTH_MAX: usize = 16;
/// How deep blocks may nest (`<virtual-mta>` holding `<domain>` is two).
pub const BLOCK_DEPTH_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: Arc<str>,
    pub line: u32,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Clone)]
pub enum Node {
    Directive { name: String, args: Vec<String>, span: Span },
    Block { name: String, arg: Option<String>, children: Vec<Node>, span: Span },
}

impl Node {
    pub fn span(&self) -> &Span {
        match self {
            Node::Directive { span, .. } | Node::Block { span, .. } => span,
        }
    }
}

/// Loads an included file: given the name as written, returns (display path, contents).
pub type IncludeLoader<'a> = dyn FnMut(&str) -> Result<(String, String), String> + 'a;

/// Splits one line into words. `#` starts a comment at a word start; double or single
/// quotes group a word; a word starting with `/` runs to the next unescaped `/` (regexes
/// such as `/^421 .* too many/` contain spaces).
fn split_words(line: &str, span: &Span) -> Result<Vec<String>, ConfigError> {
    let mut words = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            break;
        }
        if c == b'"' || c == b'\'' {
            let end = line[i + 1..].find(c as char).ok_or_else(|| {
                ConfigError::at(span, "unterminated quoted value", "close the quote on the same line")
            })?;
            words.push(line[i + 1..i + 1 + end].to_string());
            i += end + 2;
            continue;
        }
        let start = i;
        if c == b'/' {
            // A regex: scan to the closing slash, honouring backslash escapes.
            i += 1;
            while i < bytes.len() && bytes[i] != b'/' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        }
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        words.push(line[start..i].to_string());
    }
    Ok(words)
}

struct Frame {
    name: String,
    arg: Option<String>,
    span: Span,
    children: Vec<Node>,
}

/// Parses `text` (named `file`) into a tree, following `include` through `load`, and
/// expanding `domain-macro` names used as `<domain $NAME>`.
pub fn parse(file: &str, text: &str, load: &mut IncludeLoader) -> Result<Vec<Node>, ConfigError> {
    let mut macros = HashMap::new();
    let nodes = parse_file(file, text, load, 0, &mut macros)?;
    Ok(nodes)
}

fn parse_file(
    file: &str,
    text: &str,
    load: &mut IncludeLoader,
    depth: usize,
    macros: &mut HashMap<String, Vec<String>>,
) -> Result<Vec<Node>, ConfigError> {
    let file: Arc<str> = Arc::from(file);
    let mut stack: Vec<Frame> = vec![Frame {
        name: String::new(),
        arg: None,
        span: Span { file: file.clone(), line: 0 },
        children: Vec::new(),
    }];
    for (index, raw) in text.lines().enumerate() {
        let span = Span { file: file.clone(), line: index as u32 + 1 };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("</") {
            let name = rest.trim_end_matches('>').trim().to_ascii_lowercase();
            if stack.len() == 1 {
                return Err(ConfigError::at(&span, format!("`</{name}>` closes no open block"), "remove it"));
            }
            let frame = stack.pop().expect("stack has an open block");
            if frame.name != name {
                return Err(ConfigError::at(
                    &span,
                    format!("`</{name}>` closes `<{}>` opened at line {}", frame.name, frame.span.line),
                    format!("write `</{}>`", frame.name),
                ));
            }
            let parent = stack.last_mut().expect("root frame stays");
            push_block(parent, frame, macros, &span)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix('<') {
            let inner = rest
                .strip_suffix('>')
                .ok_or_else(|| ConfigError::at(&span, "block opening without `>`", "write `<name arg>`"))?;
            let mut words = split_words(inner, &span)?;
            if words.is_empty() {
                return Err(ConfigError::at(&span, "empty block name `<>`", "write `<name arg>`"));
            }
            let name = words.remove(0).to_ascii_lowercase();
            let arg = if words.is_empty() { None } else { Some(words.join(" ")) };
            if stack.len() > BLOCK_DEPTH_MAX {
                return Err(ConfigError::at(&span, "blocks nested too deeply", "close the open blocks"));
            }
            stack.push(Frame { name, arg, span, children: Vec::new() });
            continue;
        }
        let mut words = split_words(line, &span)?;
        if words.is_empty() {
            continue;
        }
        // Directive names are case-insensitive; a leading regex (`/spam/ spam-related` in
        // `<bounce-category-patterns>`) keeps its case.
        let first = words.remove(0);
        let name = if first.starts_with('/') { first } else { first.to_ascii_lowercase() };
        match name.as_str() {
            "include" => {
                if depth >= INCLUDE_DEPTH_MAX {
                    return Err(ConfigError::at(&span, "includes nested too deeply", "look for an include cycle"));
                }
                let target = words.first().ok_or_else(|| {
                    ConfigError::at(&span, "`include` needs a file name", "write `include /path/file.conf`")
                })?;
                let (path, body) = load(target)
                    .map_err(|e| ConfigError::at(&span, format!("cannot include `{target}`: {e}"), "check the path"))?;
                let nodes = parse_file(&path, &body, load, depth + 1, macros)?;
                stack.last_mut().expect("root frame stays").children.extend(nodes);
            }
            "domain-macro" => {
                if words.len() != 2 {
                    return Err(ConfigError::at(
                        &span,
                        "`domain-macro` takes a name and a comma-separated domain list",
                        "write `domain-macro NAME a.com,b.com`",
                    ));
                }
                let list = words[1].split(',').map(|d| d.trim().to_ascii_lowercase()).filter(|d| !d.is_empty());
                macros.insert(words[0].clone(), list.collect());
            }
            _ => stack.last_mut().expect("root frame stays").children.push(Node::Directive { name, args: words, span }),
        }
    }
    if stack.len() > 1 {
        let frame = stack.last().expect("checked");
        return Err(ConfigError::at(
            &frame.span,
            format!("`<{}>` is never closed", frame.name),
            format!("add `</{}>`", frame.name),
        ));
    }
    Ok(stack.pop().expect("root frame").children)
}

/// Closes a block into its parent; a `<domain $macro>` becomes one block per listed domain.
fn push_block(
    parent: &mut Frame,
    frame: Frame,
    macros: &HashMap<String, Vec<String>>,
    close_span: &Span,
) -> Result<(), ConfigError> {
    if frame.name == "domain" {
        if let Some(name) = frame.arg.as_deref().and_then(|a| a.strip_prefix('$')) {
            let domains = macros.get(name).ok_or_else(|| {
                ConfigError::at(
                    &frame.span,
                    format!("domain macro `${name}` is not defined"),
                    "define it above with `domain-macro NAME a.com,b.com`",
                )
            })?;
            for domain in domains {
                parent.children.push(Node::Block {
                    name: frame.name.clone(),
                    arg: Some(domain.clone()),
                    children: frame.children.clone(),
                    span: frame.span.clone(),
                });
            }
            return Ok(());
        }
    }
    let _ = close_span;
    parent.children.push(Node::Block { name: frame.name, arg: frame.arg, children: frame.children, span: frame.span });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_include(_: &str) -> Result<(String, String), String> {
        Err("includes disabled".into())
    }

    #[test]
    fn words_quotes_regex_comments() {
        let span = Span { file: "t".into(), line: 1 };
        let cases: &[(&str, &[&str])] = &[
            ("a b c", &["a", "b", "c"]),
            ("password \"change me\" # c", &["password", "change me"]),
            ("reply /^421 .* too many/ mode=backoff", &["reply", "/^421 .* too many/", "mode=backoff"]),
            ("reply /a\\/b c/ x", &["reply", "/a\\/b c/", "x"]),
            ("x a#b", &["x", "a#b"]),
        ];
        for (input, expected) in cases {
            assert_eq!(split_words(input, &span).unwrap(), *expected, "input {input:?}");
        }
    }

    #[test]
    fn blocks_and_macros() {
        let text = "domain-macro m a.com,b.com\n<domain $m>\n max-smtp-out 3\n</domain>\n";
        let nodes = parse("f.conf", text, &mut no_include).unwrap();
        assert_eq!(nodes.len(), 2);
        match &nodes[1] {
            Node::Block { name, arg, children, .. } => {
                assert_eq!(name, "domain");
                assert_eq!(arg.as_deref(), Some("b.com"));
                assert_eq!(children.len(), 1);
            }
            _ => panic!("expected a block"),
        }
    }

    #[test]
    fn unclosed_and_mismatched_blocks_name_the_line() {
        let err = parse("f.conf", "<domain x>\n", &mut no_include).unwrap_err();
        assert_eq!(err.to_string(), "f.conf:1: `<domain>` is never closed (hint: add `</domain>`)");
        let err = parse("f.conf", "<domain x>\n</source>\n", &mut no_include).unwrap_err();
        assert!(err.to_string().starts_with("f.conf:2: `</source>` closes `<domain>`"), "{err}");
    }

    #[test]
    fn include_goes_through_loader() {
        let mut load = |name: &str| -> Result<(String, String), String> {
            assert_eq!(name, "other.conf");
            Ok(("other.conf".into(), "shards 2\n".into()))
        };
        let nodes = parse("main.conf", "include other.conf\n", &mut load).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].span().to_string(), "other.conf:1");
    }
}
