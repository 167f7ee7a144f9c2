//! PowerMTA's configuration grammar: text → tree of directives and blocks, each with its
//! file:line. No file system access: `include` goes through a caller-supplied loader.
//!
//! What the grammar takes, as PowerMTA does: `#` comments anywhere a word may start (after a
//! block opener too: `<source 0/0>  # everyone`); quoted values (`""` is an empty value);
//! `/regex/` words that may hold spaces; a line ending in `,` or `\` continues on the next
//! (long `domain-macro` lists); directive names in any case (`Pickup`); `include` with shell
//! globs; `domain-macro NAME a, b, c` used as `<domain $NAME>`, `<domain yahoo.$NAME>` and
//! `relay-domain yahoo.$NAME`.
//!
//! Problems do not stop the parse: each is recorded with its file:line and the parse goes
//! on, so `sluice check-config` can report every one.

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

/// Loads included files: given the name as written (possibly a glob), returns each matching
/// file as (display path, contents), in name order.
pub type IncludeLoader<'a> = dyn FnMut(&str) -> Result<Vec<(String, String)>, String> + 'a;

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

/// One logical line: its words (continuation lines joined) and where it began.
struct Logical {
    words: Vec<String>,
    span: Span,
}

/// Lines → logical lines: comments gone, continuations (`,` or `\` at the end) joined.
fn logical_lines(file: &Arc<str>, text: &str, errors: &mut Vec<ConfigError>) -> Vec<Logical> {
    let mut out: Vec<Logical> = Vec::new();
    let mut pending: Option<Logical> = None;
    for (index, raw) in text.lines().enumerate() {
        let span = Span { file: file.clone(), line: index as u32 + 1 };
        let mut words = match split_words(raw, &span) {
            Ok(w) => w,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        let opener = words[0].starts_with('<');
        let mut continues = false;
        if let Some(last) = words.last_mut() {
            if last == "\\" {
                words.pop();
                continues = true;
            } else if let Some(stripped) = last.strip_suffix('\\') {
                *last = stripped.to_string();
                continues = true;
            } else if last.ends_with(',') && !opener {
                continues = true;
            }
        }
        let line = match pending.take() {
            Some(mut p) => {
                p.words.extend(words);
                p
            }
            None => Logical { words, span },
        };
        if continues {
            pending = Some(line);
        } else {
            out.push(line);
        }
    }
    out.extend(pending);
    out
}

struct Frame {
    name: String,
    arg: Option<String>,
    span: Span,
    children: Vec<Node>,
}

/// What a parse found: the tree, and every problem on the way.
pub struct Parsed {
    pub nodes: Vec<Node>,
    pub errors: Vec<ConfigError>,
}

/// Parses `text` (named `file`) into a tree, following `include` through `load`, and
/// expanding `domain-macro` names.
pub fn parse(file: &str, text: &str, load: &mut IncludeLoader) -> Parsed {
    let mut p = Parser { load, macros: HashMap::new(), errors: Vec::new() };
    let nodes = p.file(file, text, 0);
    Parsed { nodes, errors: p.errors }
}

struct Parser<'l, 'a> {
    load: &'l mut IncludeLoader<'a>,
    macros: HashMap<String, Vec<String>>,
    errors: Vec<ConfigError>,
}

impl Parser<'_, '_> {
    fn file(&mut self, file: &str, text: &str, depth: usize) -> Vec<Node> {
        let file: Arc<str> = Arc::from(file);
        let root =
            Frame { name: String::new(), arg: None, span: Span { file: file.clone(), line: 0 }, children: vec![] };
        let mut stack = vec![root];
        for Logical { words, span } in logical_lines(&file, text, &mut self.errors) {
            let first = &words[0];
            if let Some(rest) = first.strip_prefix("</") {
                self.close(&mut stack, rest, &span);
            } else if first.starts_with('<') {
                self.open(&mut stack, &words, span);
            } else {
                self.directive(&mut stack, words, span, depth);
            }
        }
        while stack.len() > 1 {
            let frame = stack.pop().expect("more than the root");
            self.errors.push(ConfigError::at(
                &frame.span,
                format!("`<{}>` is never closed", frame.name),
                format!("add `</{}>`", frame.name),
            ));
            let parent = stack.last_mut().expect("root frame stays");
            self.push_block(parent, frame);
        }
        stack.pop().expect("root frame").children
    }

    fn close(&mut self, stack: &mut Vec<Frame>, rest: &str, span: &Span) {
        let name = rest.trim_end_matches('>').trim().to_ascii_lowercase();
        if stack.len() == 1 {
            self.errors.push(ConfigError::at(span, format!("`</{name}>` closes no open block"), "remove it"));
            return;
        }
        if stack.last().is_some_and(|f| f.name != name) {
            let open = stack.last().expect("checked");
            let error = ConfigError::at(
                span,
                format!("`</{name}>` closes `<{}>` opened at line {}", open.name, open.span.line),
                format!("write `</{}>`", open.name),
            );
            self.errors.push(error);
            // Close the block this names if it is open further out; else ignore the line.
            if !stack.iter().skip(1).any(|f| f.name == name) {
                return;
            }
            while stack.last().is_some_and(|f| f.name != name) {
                let frame = stack.pop().expect("not the root");
                self.push_block(stack.last_mut().expect("root stays"), frame);
            }
        }
        let frame = stack.pop().expect("an open block");
        self.push_block(stack.last_mut().expect("root frame stays"), frame);
    }

    fn open(&mut self, stack: &mut Vec<Frame>, words: &[String], span: Span) {
        let joined = words.join(" ");
        let Some(inner) = joined.strip_prefix('<').and_then(|r| r.strip_suffix('>')) else {
            self.errors.push(ConfigError::at(&span, "block opening without `>`", "write `<name arg>`"));
            return;
        };
        let mut parts = inner.split_whitespace();
        let Some(name) = parts.next() else {
            self.errors.push(ConfigError::at(&span, "empty block name `<>`", "write `<name arg>`"));
            return;
        };
        let name = name.to_ascii_lowercase();
        let rest: Vec<&str> = parts.collect();
        let arg = (!rest.is_empty()).then(|| rest.join(" "));
        if stack.len() > BLOCK_DEPTH_MAX {
            self.errors.push(ConfigError::at(&span, "blocks nested too deeply", "close the open blocks"));
        }
        stack.push(Frame { name, arg, span, children: Vec::new() });
    }

    fn directive(&mut self, stack: &mut [Frame], mut words: Vec<String>, span: Span, depth: usize) {
        // Directive names are case-insensitive; a leading regex (`/spam/ spam-related` in
        // `<bounce-category-patterns>`) keeps its case.
        let first = words.remove(0);
        let name = if first.starts_with('/') { first } else { first.to_ascii_lowercase() };
        let top = stack.last_mut().expect("root frame stays");
        match name.as_str() {
            "include" => {
                let nodes = self.include(&words, &span, depth);
                stack.last_mut().expect("root frame stays").children.extend(nodes);
            }
            "domain-macro" => self.macro_line(&words, &span),
            "relay-domain" if words.iter().any(|w| w.contains('$')) => {
                for domain in self.expand(words.first().map_or("", String::as_str), &span) {
                    let node = Node::Directive { name: name.clone(), args: vec![domain], span: span.clone() };
                    top.children.push(node);
                }
            }
            _ => top.children.push(Node::Directive { name, args: words, span }),
        }
    }

    fn include(&mut self, words: &[String], span: &Span, depth: usize) -> Vec<Node> {
        if depth >= INCLUDE_DEPTH_MAX {
            self.errors.push(ConfigError::at(span, "includes nested too deeply", "look for an include cycle"));
            return Vec::new();
        }
        let Some(target) = words.first() else {
            self.errors.push(ConfigError::at(span, "`include` needs a file name", "write `include /path/file.conf`"));
            return Vec::new();
        };
        match (self.load)(target) {
            Ok(files) => files.into_iter().flat_map(|(path, body)| self.file(&path, &body, depth + 1)).collect(),
            Err(e) => {
                self.errors.push(ConfigError::at(span, format!("cannot include `{target}`: {e}"), "check the path"));
                Vec::new()
            }
        }
    }

    /// `domain-macro NAME a.com, b.com, co.uk` (continued over lines when they end in `,`).
    fn macro_line(&mut self, words: &[String], span: &Span) {
        let Some((name, values)) = words.split_first() else {
            self.errors.push(ConfigError::at(
                span,
                "`domain-macro` takes a name and a comma-separated domain list",
                "write `domain-macro NAME a.com, b.com`",
            ));
            return;
        };
        let joined = values.join(",");
        let list: Vec<String> =
            joined.split(',').map(|d| d.trim().to_ascii_lowercase()).filter(|d| !d.is_empty()).collect();
        if list.is_empty() {
            self.errors.push(ConfigError::at(
                span,
                format!("domain macro `{name}` lists no domains"),
                "write `domain-macro NAME a.com, b.com`",
            ));
            return;
        }
        self.macros.insert(name.clone(), list);
    }

    /// `yahoo.$topLevel` → `yahoo.com`, `yahoo.de`, ...; several macros in one pattern
    /// (`$isp.$tld`) give every combination.
    fn expand(&mut self, pattern: &str, span: &Span) -> Vec<String> {
        let Some(at) = pattern.find('$') else { return vec![pattern.to_string()] };
        let after = &pattern[at + 1..];
        let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(after.len());
        let name = &after[..len];
        let Some(values) = self.macros.get(name).cloned() else {
            self.errors.push(ConfigError::at(
                span,
                format!("domain macro `${name}` is not defined"),
                "define it above with `domain-macro NAME a.com,b.com`",
            ));
            return Vec::new();
        };
        let rest = &after[len..];
        let tails = self.expand(rest, span);
        values.iter().flat_map(|v| tails.iter().map(move |t| format!("{}{v}{t}", &pattern[..at]))).collect()
    }

    /// Closes a block into its parent; a `<domain ...$macro...>` becomes one block per value.
    fn push_block(&mut self, parent: &mut Frame, frame: Frame) {
        if frame.name == "domain" && frame.arg.as_deref().is_some_and(|a| a.contains('$')) {
            let pattern = frame.arg.clone().expect("checked");
            for domain in self.expand(&pattern, &frame.span) {
                parent.children.push(Node::Block {
                    name: frame.name.clone(),
                    arg: Some(domain),
                    children: frame.children.clone(),
                    span: frame.span.clone(),
                });
            }
            return;
        }
        parent.children.push(Node::Block {
            name: frame.name,
            arg: frame.arg,
            children: frame.children,
            span: frame.span,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_include(_: &str) -> Result<Vec<(String, String)>, String> {
        Err("includes disabled".into())
    }

    fn parse_ok(text: &str) -> Vec<Node> {
        let p = parse("f.conf", text, &mut no_include);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.nodes
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
            ("backoff-notify \"\"", &["backoff-notify", ""]),
            ("// other    # catch-all", &["//", "other"]),
        ];
        for (input, expected) in cases {
            assert_eq!(split_words(input, &span).unwrap(), *expected, "input {input:?}");
        }
    }

    #[test]
    fn comments_after_block_openers_and_closers() {
        let nodes = parse_ok("<source 0/0>   # matches all\n  smtp-service yes # on\n</source> # end\n<domain test.port25.com> # 'test' host\n</domain>\n");
        assert_eq!(nodes.len(), 2);
        match &nodes[0] {
            Node::Block { name, arg, children, .. } => {
                assert_eq!((name.as_str(), arg.as_deref(), children.len()), ("source", Some("0/0"), 1));
            }
            _ => panic!("expected a block"),
        }
    }

    #[test]
    fn macros_with_spaces_continuations_and_infix_use() {
        let text = "domain-macro topLevel com, de,\n    co.uk\n<domain yahoo.$topLevel>\n max-smtp-out 3\n</domain>\nrelay-domain mail.$topLevel\ndomain-macro isp aol, ymail\n<domain $isp.$topLevel>\n</domain>\n";
        let nodes = parse_ok(text);
        let domains: Vec<&str> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Block { arg, .. } => arg.as_deref(),
                _ => None,
            })
            .collect();
        assert_eq!(
            domains,
            [
                "yahoo.com",
                "yahoo.de",
                "yahoo.co.uk",
                "aol.com",
                "aol.de",
                "aol.co.uk",
                "ymail.com",
                "ymail.de",
                "ymail.co.uk"
            ]
        );
        let relays: Vec<&str> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Directive { args, .. } => Some(args[0].as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(relays, ["mail.com", "mail.de", "mail.co.uk"]);
    }

    #[test]
    fn names_are_case_insensitive_and_lists_continue() {
        let nodes = parse_ok("Pickup /a /b\nrecord-fields d timeLogged,\n  orig, rcpt\n");
        match &nodes[1] {
            Node::Directive { name, args, span } => {
                assert_eq!(name, "record-fields");
                assert_eq!(args.join(" "), "d timeLogged, orig, rcpt");
                assert_eq!(span.line, 2);
            }
            _ => panic!("expected a directive"),
        }
        assert!(matches!(&nodes[0], Node::Directive { name, .. } if name == "pickup"));
    }

    #[test]
    fn every_structural_problem_is_reported() {
        let p = parse("f.conf", "<domain x>\n</source>\n<source 0/0>\n", &mut no_include);
        let shown: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].starts_with("f.conf:2: `</source>` closes `<domain>`"), "{shown:?}");
        assert!(shown.iter().any(|s| s.starts_with("f.conf:3: `<source>` is never closed")), "{shown:?}");
        assert!(shown.iter().any(|s| s.starts_with("f.conf:1: `<domain>` is never closed")), "{shown:?}");
    }

    #[test]
    fn undefined_macro_names_the_line() {
        let p = parse("f.conf", "<domain $nope>\n</domain>\n", &mut no_include);
        assert_eq!(
            p.errors[0].to_string(),
            "f.conf:1: domain macro `$nope` is not defined (hint: define it above with `domain-macro NAME a.com,b.com`)"
        );
    }

    #[test]
    fn include_goes_through_loader_with_every_match() {
        let mut load = |name: &str| -> Result<Vec<(String, String)>, String> {
            assert_eq!(name, "conf.d/*.conf");
            Ok(vec![("conf.d/a.conf".into(), "shards 2\n".into()), ("conf.d/b.conf".into(), "\nshards 3\n".into())])
        };
        let p = parse("main.conf", "include conf.d/*.conf\n", &mut load);
        assert!(p.errors.is_empty());
        let spans: Vec<String> = p.nodes.iter().map(|n| n.span().to_string()).collect();
        assert_eq!(spans, ["conf.d/a.conf:1", "conf.d/b.conf:2"]);
    }
}
