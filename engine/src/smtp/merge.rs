//! PowerMTA's mail merge over SMTP, as its clients speak it (Ruby's `powermta` gem, PHP's
//! PowerMta_Mail_Protocol, mailer panels' pickup files): `XMRG FROM:<sender> [VERP]` opens
//! the transaction, `XDFN name="value" ...` defines variables for the next `RCPT TO`,
//! `XPRT n [LAST]` sends part n (354, the part, `.`, 250), and after the last part the
//! message is complete. Each recipient gets the parts its `*parts` lists (all, when it names
//! none) with `[name]` replaced by its value; `[*to]` is the recipient, `[*from]` the sender,
//! `[*date]` the date; `*jobid`, `*vmta`, `*envid` and `*from` set the job, the VMTA, the
//! envelope id and the sender of that recipient's message. `XACK OFF` stops the replies to
//! XDFN and RCPT (the client does not read them).

use std::collections::BTreeMap;

/// The most variables one recipient may carry, and the longest value (bytes).
pub const VARS_MAX: usize = 1_000;
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

/// A mail-merge transaction's content: the parts by number (transparency form, as DATA
/// stores a message) and each recipient's variables (in the order of the recipients).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merge {
    pub parts: BTreeMap<u32, Vec<u8>>,
    pub vars: Vec<Vec<(String, String)>>,
}

/// One recipient's message and what its variables set of the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    /// The message in transparency form.
    pub data: Vec<u8>,
    pub job_id: Option<String>,
    pub vmta: Option<String>,
    pub envid: Option<String>,
    pub mail_from: Option<String>,
}

/// `XDFN`'s arguments: `name="value"` (with `\"`, `\\`, `\r`, `\n` escapes) or `name=value`,
/// separated by blanks.
pub fn parse_xdfn(arg: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    let mut rest = arg.trim_start();
    while !rest.is_empty() {
        let eq =
            rest.find('=').ok_or_else(|| format!("`{}` is not name=value", rest.split(' ').next().unwrap_or("")))?;
        let name = &rest[..eq];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"*_-.".contains(&b)) {
            return Err(format!("`{name}` is not a variable name"));
        }
        rest = &rest[eq + 1..];
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next().map(|(_, e)| e) {
                        Some('r') => value.push('\r'),
                        Some('n') => value.push('\n'),
                        Some(e) => value.push(e),
                        None => return Err(format!("the value of `{name}` ends in a backslash")),
                    },
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("the value of `{name}` has no closing quote"))?;
            rest = &quoted[end..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(format!("the value of `{name}` is over {VALUE_BYTES_MAX} bytes"));
        }
        vars.push((name.to_ascii_lowercase(), value));
        rest = rest.trim_start();
    }
    Ok(vars)
}

impl Merge {
    /// Recipient `index`'s message. `expand_undefined` (`mailmerge-expands-undefined-
    /// variables`, yes): a `[name]` no variable defines becomes empty, else stays as written.
    pub fn render(
        &self,
        index: usize,
        rcpt: &str,
        mail_from: &str,
        date: &str,
        expand_undefined: bool,
    ) -> Result<Personal, String> {
        let empty = Vec::new();
        let vars = self.vars.get(index).unwrap_or(&empty);
        let var = |name: &str| vars.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let numbers: Vec<u32> = match var("*parts") {
            Some(list) => list
                .split(',')
                .map(|p| p.trim().parse().map_err(|_| format!("*parts=\"{list}\" is not a list of part numbers")))
                .collect::<Result<_, _>>()?,
            None => self.parts.keys().copied().collect(),
        };
        let mut text = Vec::new();
        for n in numbers {
            let part = self.parts.get(&n).ok_or_else(|| format!("*parts names part {n}, which was not sent"))?;
            text.extend(crate::dkim::unstuffed(part).concat());
        }
        let sender = var("*from").unwrap_or(mail_from);
        let mut out = Vec::with_capacity(text.len() + text.len() / 8);
        let mut rest = &text[..];
        while let Some(open) = memchr::memchr(b'[', rest) {
            out.extend_from_slice(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.iter().take(128).position(|&b| b == b']');
            let name = close
                .map(|c| &after[..c])
                .filter(|n| !n.is_empty() && n.iter().all(|b| b.is_ascii_alphanumeric() || b"*_-.".contains(b)));
            let Some(name) = name else {
                out.push(b'[');
                rest = after;
                continue;
            };
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = match lower.as_str() {
                "*to" => Some(rcpt),
                "*from" => Some(sender),
                "*date" => var("*date").or(Some(date)),
                _ => var(&lower),
            };
            match value {
                Some(v) => out.extend_from_slice(v.as_bytes()),
                None if expand_undefined => {}
                None => out.extend_from_slice(&rest[open..open + name.len() + 2]),
            }
            rest = &after[name.len() + 1..];
        }
        out.extend_from_slice(rest);
        Ok(Personal {
            data: crate::http::transparency_form(&out),
            job_id: var("*jobid").map(str::to_string),
            vmta: var("*vmta").map(str::to_string),
            envid: var("*envid").map(str::to_string),
            mail_from: var("*from").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdfn_values_quoted_bare_and_escaped() {
        let v = parse_xdfn(r#"FNAME="Sponge Bob" id=123456 *parts=1,2 note="a \"quote\"\r\nnext""#).unwrap();
        assert_eq!(
            v,
            [
                ("fname".to_string(), "Sponge Bob".to_string()),
                ("id".into(), "123456".into()),
                ("*parts".into(), "1,2".into()),
                ("note".into(), "a \"quote\"\r\nnext".into())
            ]
        );
        assert!(parse_xdfn(r#"a="open"#).is_err());
        assert!(parse_xdfn("novalue").is_err());
        assert!(parse_xdfn("bad name=1").is_err());
    }

    #[test]
    fn each_recipient_gets_its_parts_and_values() {
        let mut m = Merge::default();
        m.parts.insert(1, b"To: [*to]\r\nSubject: Hi [FirstName]\r\n\r\nDear [firstname], [missing]\r\n".to_vec());
        m.parts.insert(2, b"..P.S. for [firstname] [1 2]\r\n".to_vec());
        m.vars.push(parse_xdfn(r#"firstname="Ann" *parts=1,2 *jobid=j7 *vmta=v1"#).unwrap());
        m.vars.push(parse_xdfn(r#"firstname=".Bob" *parts=1"#).unwrap());
        let a = m.render(0, "ann@x.test", "s@y.test", "today", true).unwrap();
        assert_eq!(a.data, b"To: ann@x.test\r\nSubject: Hi Ann\r\n\r\nDear Ann, \r\n..P.S. for Ann [1 2]\r\n".to_vec());
        assert_eq!((a.job_id.as_deref(), a.vmta.as_deref()), (Some("j7"), Some("v1")));
        let b = m.render(1, "bob@x.test", "s@y.test", "today", false).unwrap();
        assert_eq!(b.data, b"To: bob@x.test\r\nSubject: Hi .Bob\r\n\r\nDear .Bob, [missing]\r\n".to_vec());
        m.vars.push(parse_xdfn("*parts=3").unwrap());
        assert!(m.render(2, "c@x.test", "s@y.test", "today", true).unwrap_err().contains("part 3"));
    }
}
