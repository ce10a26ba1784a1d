//! The part of Structured Field Values (RFC 8941) that `Signature-Input`,
//! `Signature` (RFC 9421 §4) and `Content-Digest` (RFC 9530 §2) need:
//! parsing a Dictionary (§4.2.2) whose members are Items or Inner Lists
//! with Parameters, and serialising an Inner List (§4.1.1.1) for the
//! `@signature-params` line. Written from RFC 8941's parsing and
//! serialisation algorithms for the spec WFM alone; decimals are not
//! needed by these fields and are refused.

use std::fmt::Write as _;

/// A Bare Item (RFC 8941 §3.3) other than a Decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareItem {
    Integer(i64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

/// Parameters in order (§3.1.2); keys are unique (a later one replaces).
pub type Params = Vec<(String, BareItem)>;

/// An Item with its Parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bare: BareItem,
    pub params: Params,
}

/// A Dictionary member's value: an Item or an Inner List.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// Why a field value is not a Structured Field of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("structured field at byte {at}: {what}")]
pub struct SfError {
    pub at: usize,
    pub what: &'static str,
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err<T>(&self, what: &'static str) -> Result<T, SfError> {
        Err(SfError { at: self.at, what })
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// §4.2.2.
    fn dictionary(&mut self) -> Result<Vec<(String, Member)>, SfError> {
        let mut members: Vec<(String, Member)> = Vec::new();
        while self.peek().is_some() {
            let key = self.key()?;
            let member = if self.peek() == Some(b'=') {
                self.at += 1;
                self.item_or_inner_list()?
            } else {
                Member::Item(Item {
                    bare: BareItem::Boolean(true),
                    params: self.params()?,
                })
            };
            // A later member with the same key replaces the earlier one.
            members.retain(|(k, _)| *k != key);
            members.push((key, member));
            self.skip_ows();
            if self.peek().is_none() {
                return Ok(members);
            }
            if self.peek() != Some(b',') {
                return self.err("expected ',' between dictionary members");
            }
            self.at += 1;
            self.skip_ows();
            if self.peek().is_none() {
                return self.err("trailing ',' in dictionary");
            }
        }
        Ok(members)
    }

    fn item_or_inner_list(&mut self) -> Result<Member, SfError> {
        if self.peek() == Some(b'(') {
            self.at += 1;
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                match self.peek() {
                    Some(b')') => {
                        self.at += 1;
                        let params = self.params()?;
                        return Ok(Member::InnerList(items, params));
                    }
                    None => return self.err("unterminated inner list"),
                    _ => {}
                }
                items.push(self.item()?);
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return self.err("expected SP or ')' in inner list");
                }
            }
        }
        Ok(Member::Item(self.item()?))
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare_item()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    /// §4.2.3.2.
    fn params(&mut self) -> Result<Params, SfError> {
        let mut params: Params = Vec::new();
        while self.peek() == Some(b';') {
            self.at += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            params.retain(|(k, _)| *k != key);
            params.push((key, value));
        }
        Ok(params)
    }

    /// §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Result<String, SfError> {
        let start = self.at;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.at += 1,
            _ => return self.err("a key starts with a lowercase letter or '*'"),
        }
        while matches!(self.peek(), Some(c) if c.is_ascii_lowercase()
            || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*'))
        {
            self.at += 1;
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.at]).into_owned())
    }

    /// §4.2.3.1.
    fn bare_item(&mut self) -> Result<BareItem, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.integer(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => self.token(),
            _ => self.err("not a bare item"),
        }
    }

    /// §4.2.4, integers only (a '.' is a Decimal, which these fields never use).
    fn integer(&mut self) -> Result<BareItem, SfError> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let digits = &self.input[start..self.at];
        if digits.is_empty() {
            return self.err("a number needs a digit");
        }
        if self.peek() == Some(b'.') {
            return self.err("decimals are not used by these fields");
        }
        if digits.len() > 15 {
            return self.err("an integer has at most 15 digits");
        }
        let mut value: i64 = 0;
        for d in digits {
            value = value * 10 + i64::from(d - b'0');
        }
        Ok(BareItem::Integer(if negative { -value } else { value }))
    }

    /// §4.2.5.
    fn string(&mut self) -> Result<BareItem, SfError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                        _ => return self.err("only '\\\"' and '\\\\' escapes exist"),
                    }
                }
                Some(b'"') => {
                    self.at += 1;
                    return Ok(BareItem::String(out));
                }
                Some(c @ 0x20..=0x7e) => out.push(char::from(c)),
                Some(_) => return self.err("strings are printable ASCII"),
            }
            self.at += 1;
        }
    }

    /// §4.2.6: `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
    fn token(&mut self) -> Result<BareItem, SfError> {
        let start = self.at;
        self.at += 1;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric()
            || b"!#$%&'*+-.^_`|~:/".contains(&c))
        {
            self.at += 1;
        }
        Ok(BareItem::Token(
            String::from_utf8_lossy(&self.input[start..self.at]).into_owned(),
        ))
    }

    /// §4.2.7: `:` base64 `:`.
    fn bytes(&mut self) -> Result<BareItem, SfError> {
        self.at += 1;
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        {
            self.at += 1;
        }
        if self.peek() != Some(b':') {
            return self.err("unterminated byte sequence");
        }
        let text = &self.input[start..self.at];
        self.at += 1;
        match data_encoding::BASE64.decode(text) {
            Ok(bytes) => Ok(BareItem::Bytes(bytes)),
            Err(_) => self.err("byte sequence is not base64"),
        }
    }

    /// §4.2.8.
    fn boolean(&mut self) -> Result<BareItem, SfError> {
        self.at += 1;
        let value = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return self.err("a boolean is ?0 or ?1"),
        };
        self.at += 1;
        Ok(BareItem::Boolean(value))
    }
}

/// Parses a Dictionary field value (§4.2 with §4.2.2), leading and trailing
/// spaces discarded. An empty value is an empty Dictionary.
pub fn parse_dictionary(value: &str) -> Result<Vec<(String, Member)>, SfError> {
    let trimmed = value.trim_matches(' ');
    let offset = value.len() - value.trim_start_matches(' ').len();
    let mut parser = Parser {
        input: trimmed.as_bytes(),
        at: 0,
    };
    parser.dictionary().map_err(|e| SfError {
        at: e.at + offset,
        what: e.what,
    })
}

/// §4.1.3.1 / §4.1.6 / §4.1.8 ...: one Bare Item.
fn serialize_bare(out: &mut String, bare: &BareItem) {
    match bare {
        BareItem::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::Bytes(b) => {
            out.push(':');
            out.push_str(&data_encoding::BASE64.encode(b));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

/// §4.1.1.2: `;key` for a true Boolean, `;key=value` otherwise.
pub fn serialize_params(out: &mut String, params: &Params) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            serialize_bare(out, value);
        }
    }
}

/// §4.1.1.1: `(` items separated by one SP `)` then the parameters.
pub fn serialize_inner_list(items: &[Item], params: &Params) -> String {
    let mut out = String::from("(");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        serialize_bare(&mut out, &item.bare);
        serialize_params(&mut out, &item.params);
    }
    out.push(')');
    serialize_params(&mut out, params);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_input_parses_and_serialises_back() {
        let text = r#"sig1=("@method" "@target-uri" "content-digest");created=1618884473;keyid="test-key-ecc-p256";alg="ecdsa-p256-sha256""#;
        let dict = parse_dictionary(text).expect("parses");
        assert_eq!(dict.len(), 1);
        let (label, Member::InnerList(items, params)) = &dict[0] else {
            panic!("an inner list: {dict:?}");
        };
        assert_eq!(label, "sig1");
        assert_eq!(items.len(), 3);
        assert_eq!(params[0], ("created".into(), BareItem::Integer(1618884473)));
        assert_eq!(
            serialize_inner_list(items, params),
            text.trim_start_matches("sig1=")
        );
    }

    #[test]
    fn dictionaries_of_byte_sequences_and_flags() {
        let dict = parse_dictionary("sha-256=:AAEC:,  sha-512=:AA==:, flag;a=?0").expect("parses");
        assert_eq!(
            dict[0].1,
            Member::Item(Item {
                bare: BareItem::Bytes(vec![0, 1, 2]),
                params: vec![]
            })
        );
        assert_eq!(dict[2].0, "flag");
        assert!(parse_dictionary("a=1,").is_err());
        assert!(parse_dictionary("A=1").is_err());
        assert!(parse_dictionary("a=:AAE").is_err());
        assert!(parse_dictionary("a=1.5").is_err());
        assert!(parse_dictionary("a=(1 2").is_err());
        assert!(parse_dictionary(r#"a="\n""#).is_err());
    }
}
