//! The subset of RFC 8941 Structured Field Values that HTTP Message
//! Signatures (RFC 9421) and `Content-Digest` (RFC 9530) need: Dictionaries
//! whose members are Items or Inner Lists, with Parameters, and every Bare
//! Item type. Parsing follows RFC 8941 §4.2 (strict grammar, no recovery);
//! serialization follows §4.1, which is what RFC 9421 §2.3 and §2.5 use to
//! build a signature base.
//!
//! Bounded: the input, the number of dictionary members, inner-list items
//! and parameters each have a limit, and exceeding one is an error, never a
//! truncation.

/// Longest field value parsed (all field lines combined).
pub const MAX_FIELD_LEN: usize = 8192;
/// Most members of a dictionary.
pub const MAX_MEMBERS: usize = 16;
/// Most items of one inner list.
pub const MAX_ITEMS: usize = 64;
/// Most parameters on one item or inner list.
pub const MAX_PARAMS: usize = 16;

/// Why a structured field did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfError {
    #[error("structured field is longer than {MAX_FIELD_LEN} bytes")]
    TooLong,
    #[error("structured field has more than {what} {limit}")]
    TooMany { what: &'static str, limit: usize },
    #[error("structured field: {what} expected at byte {at}")]
    Syntax { what: &'static str, at: usize },
    #[error("structured field: integer out of range at byte {at}")]
    IntegerRange { at: usize },
}

/// A Bare Item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareItem {
    /// `-?[0-9]{1,15}`.
    Integer(i64),
    /// A decimal, kept as its canonical text (`-?[0-9]{1,12}\.[0-9]{1,3}`).
    Decimal(String),
    /// A quoted string, unescaped.
    String(String),
    /// A token.
    Token(String),
    /// `:base64:`, decoded.
    ByteSeq(Vec<u8>),
    /// `?0` / `?1`.
    Boolean(bool),
}

/// Parameters, in order (a repeated key overwrites the earlier value).
pub type Parameters = Vec<(String, BareItem)>;

/// An Item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bare: BareItem,
    pub params: Parameters,
}

/// An Inner List with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerList {
    pub items: Vec<Item>,
    pub params: Parameters,
}

/// A dictionary member value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberValue {
    Item(Item),
    InnerList(InnerList),
}

/// A dictionary member: key, value, and the value exactly as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub value: MemberValue,
    /// The member value's text as received (after the `=`).
    pub raw: String,
}

/// Looks up a parameter.
pub fn param<'a>(params: &'a Parameters, key: &str) -> Option<&'a BareItem> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn err(&self, what: &'static str) -> SfError {
        SfError::Syntax { what, at: self.pos }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn key(&mut self) -> Result<String, SfError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.pos += 1,
            _ => return Err(self.err("key")),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn bare_item(&mut self) -> Result<BareItem, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_seq(),
            Some(b'?') => self.boolean(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => Ok(self.token()),
            _ => Err(self.err("item")),
        }
    }

    fn number(&mut self) -> Result<BareItem, SfError> {
        let start = self.pos;
        let negative = self.eat(b'-');
        let digits_start = self.pos;
        let mut dot = None;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                self.pos += 1;
            } else if c == b'.' && dot.is_none() {
                dot = Some(self.pos);
                self.pos += 1;
            } else {
                break;
            }
            let len = self.pos - digits_start;
            if (dot.is_none() && len > 15) || len > 16 {
                return Err(SfError::IntegerRange { at: start });
            }
        }
        let text =
            std::str::from_utf8(&self.s[digits_start..self.pos]).map_err(|_| self.err("number"))?;
        if text.is_empty() || text.starts_with('.') {
            return Err(SfError::Syntax {
                what: "digit",
                at: digits_start,
            });
        }
        match dot {
            None => {
                let v: i64 = text
                    .parse()
                    .map_err(|_| SfError::IntegerRange { at: start })?;
                Ok(BareItem::Integer(if negative { -v } else { v }))
            }
            Some(d) => {
                let (int, frac) = text.split_at(d - digits_start);
                let frac = &frac[1..];
                if int.len() > 12 || frac.is_empty() || frac.len() > 3 {
                    return Err(SfError::Syntax {
                        what: "decimal",
                        at: start,
                    });
                }
                let int = int.trim_start_matches('0');
                let int = if int.is_empty() { "0" } else { int };
                let frac = frac.trim_end_matches('0');
                let frac = if frac.is_empty() { "0" } else { frac };
                let sign = if negative { "-" } else { "" };
                Ok(BareItem::Decimal(format!("{sign}{int}.{frac}")))
            }
        }
    }

    fn string(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("closing quote")),
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.pos += 1;
                        }
                        _ => return Err(self.err("escaped quote or backslash")),
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(BareItem::String(out));
                }
                Some(c) if (0x20..=0x7e).contains(&c) => {
                    out.push(c as char);
                    self.pos += 1;
                }
                Some(_) => return Err(self.err("printable ASCII")),
            }
        }
    }

    fn token(&mut self) -> BareItem {
        let start = self.pos;
        self.pos += 1;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
            if tchar {
                self.pos += 1;
            } else {
                break;
            }
        }
        BareItem::Token(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn byte_seq(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = &self.s[start..self.pos];
        if !self.eat(b':') {
            return Err(self.err("closing colon of a byte sequence"));
        }
        data_encoding::BASE64
            .decode(text)
            .or_else(|_| data_encoding::BASE64_NOPAD.decode(text))
            .map(BareItem::ByteSeq)
            .map_err(|_| SfError::Syntax {
                what: "base64",
                at: start,
            })
    }

    fn boolean(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1;
        if self.eat(b'1') {
            Ok(BareItem::Boolean(true))
        } else if self.eat(b'0') {
            Ok(BareItem::Boolean(false))
        } else {
            Err(self.err("0 or 1 after ?"))
        }
    }

    fn parameters(&mut self) -> Result<Parameters, SfError> {
        let mut params: Parameters = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if let Some(slot) = params.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                if params.len() == MAX_PARAMS {
                    return Err(SfError::TooMany {
                        what: "parameters on one item than",
                        limit: MAX_PARAMS,
                    });
                }
                params.push((key, value));
            }
        }
        Ok(params)
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare_item()?;
        let params = self.parameters()?;
        Ok(Item { bare, params })
    }

    fn inner_list(&mut self) -> Result<InnerList, SfError> {
        self.pos += 1; // (
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                let params = self.parameters()?;
                return Ok(InnerList { items, params });
            }
            if items.len() == MAX_ITEMS {
                return Err(SfError::TooMany {
                    what: "items in an inner list than",
                    limit: MAX_ITEMS,
                });
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(self.err("space or ) after an inner-list item")),
            }
        }
    }

    fn member_value(&mut self) -> Result<MemberValue, SfError> {
        if self.peek() == Some(b'(') {
            Ok(MemberValue::InnerList(self.inner_list()?))
        } else {
            Ok(MemberValue::Item(self.item()?))
        }
    }
}

/// Parses a Dictionary (RFC 8941 §4.2.2). `lines` are the field lines of
/// one field, combined with `, ` as §4.2 says.
pub fn parse_dictionary(lines: &[&str]) -> Result<Vec<Member>, SfError> {
    let total: usize = lines.iter().map(|l| l.len() + 2).sum();
    if total > MAX_FIELD_LEN + 2 {
        return Err(SfError::TooLong);
    }
    let joined = lines.join(", ");
    let mut p = Parser {
        s: joined.as_bytes(),
        pos: 0,
    };
    p.skip_sp();
    let mut members: Vec<Member> = Vec::new();
    if p.peek().is_none() {
        return Ok(members);
    }
    loop {
        let key = p.key()?;
        let start = p.pos;
        let value = if p.eat(b'=') {
            p.member_value()?
        } else {
            MemberValue::Item(Item {
                bare: BareItem::Boolean(true),
                params: p.parameters()?,
            })
        };
        let raw_start = if joined.as_bytes().get(start) == Some(&b'=') {
            start + 1
        } else {
            start
        };
        let raw = joined.get(raw_start..p.pos).unwrap_or_default().to_string();
        if let Some(slot) = members.iter_mut().find(|m| m.key == key) {
            slot.value = value;
            slot.raw = raw;
        } else {
            if members.len() == MAX_MEMBERS {
                return Err(SfError::TooMany {
                    what: "dictionary members than",
                    limit: MAX_MEMBERS,
                });
            }
            members.push(Member { key, value, raw });
        }
        p.skip_ows();
        if p.peek().is_none() {
            return Ok(members);
        }
        if !p.eat(b',') {
            return Err(p.err("comma between dictionary members"));
        }
        p.skip_ows();
        if p.peek().is_none() {
            return Err(p.err("member after a trailing comma"));
        }
    }
}

/// Serializes a Bare Item (RFC 8941 §4.1.3).
pub fn serialize_bare_item(item: &BareItem, out: &mut String) {
    match item {
        BareItem::Integer(i) => out.push_str(&i.to_string()),
        BareItem::Decimal(d) => out.push_str(d),
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
        BareItem::ByteSeq(b) => {
            out.push(':');
            out.push_str(&data_encoding::BASE64.encode(b));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

/// Serializes Parameters (RFC 8941 §4.1.1.2).
pub fn serialize_params(params: &Parameters, out: &mut String) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            serialize_bare_item(value, out);
        }
    }
}

/// Serializes an Item with its parameters.
pub fn serialize_item(item: &Item, out: &mut String) {
    serialize_bare_item(&item.bare, out);
    serialize_params(&item.params, out);
}

/// Serializes an Inner List (RFC 8941 §4.1.1.1).
pub fn serialize_inner_list(list: &InnerList) -> String {
    let mut out = String::from("(");
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        serialize_item(item, &mut out);
    }
    out.push(')');
    serialize_params(&list.params, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signature_input_round_trips() {
        let text = r#"sig1=("@method" "@target-uri" "content-digest");created=1618884473;keyid="test-key-rsa-pss";alg="ecdsa-p256-sha256", sig2=();created=1"#;
        let members = parse_dictionary(&[text]).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].key, "sig1");
        let MemberValue::InnerList(list) = &members[0].value else {
            panic!("inner list expected")
        };
        assert_eq!(list.items.len(), 3);
        assert_eq!(
            param(&list.params, "created"),
            Some(&BareItem::Integer(1618884473))
        );
        assert_eq!(
            serialize_inner_list(list),
            r#"("@method" "@target-uri" "content-digest");created=1618884473;keyid="test-key-rsa-pss";alg="ecdsa-p256-sha256""#
        );
        assert_eq!(members[0].raw, serialize_inner_list(list));
        assert_eq!(members[1].raw, "();created=1");
    }

    #[test]
    fn every_bare_item_type() {
        let m = parse_dictionary(&[
            r#"a=1, b=-2.50, c="q\"\\", d=tok/x:y, e=:AQI=:, f=?0, g, h;p=?1;q"#,
        ])
        .unwrap();
        let bare = |i: usize| match &m[i].value {
            MemberValue::Item(item) => item.bare.clone(),
            MemberValue::InnerList(_) => panic!("item expected"),
        };
        assert_eq!(bare(0), BareItem::Integer(1));
        assert_eq!(bare(1), BareItem::Decimal("-2.5".into()));
        assert_eq!(bare(2), BareItem::String("q\"\\".into()));
        assert_eq!(bare(3), BareItem::Token("tok/x:y".into()));
        assert_eq!(bare(4), BareItem::ByteSeq(vec![1, 2]));
        assert_eq!(bare(5), BareItem::Boolean(false));
        assert_eq!(bare(6), BareItem::Boolean(true));
        assert_eq!(bare(7), BareItem::Boolean(true));
    }

    #[test]
    fn several_lines_and_duplicates() {
        let m = parse_dictionary(&["a=1", "b=2, a=3"]).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].raw, "3");
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for bad in [
            "A=1",
            "a=",
            "a=1,",
            "a=(1 2",
            "a=\"open",
            "a=:AQI=",
            "a=1234567890123456",
            "a=1.2345",
            "a=?2",
            "a=(\"x\"\"y\")",
            "a=1 b=2",
            "a=\"\u{e9}\"",
        ] {
            assert!(parse_dictionary(&[bad]).is_err(), "{bad}");
        }
        let many = (0..=MAX_MEMBERS)
            .map(|i| format!("k{i}=1"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            parse_dictionary(&[&many]),
            Err(SfError::TooMany { .. })
        ));
        assert_eq!(
            parse_dictionary(&[&"a".repeat(MAX_FIELD_LEN + 1)]),
            Err(SfError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,400}") {
            let _ = parse_dictionary(&[&s]);
        }

        #[test]
        fn never_panics_on_near_valid(s in r#"[a-z0-9=(); ",:?*@.\-+/]{0,300}"#) {
            if let Ok(members) = parse_dictionary(&[&s]) {
                prop_assert!(members.len() <= MAX_MEMBERS);
                for m in members {
                    if let MemberValue::InnerList(list) = &m.value {
                        prop_assert!(list.items.len() <= MAX_ITEMS);
                        // Serializing then parsing gives the same value.
                        let text = format!("k={}", serialize_inner_list(list));
                        let again = parse_dictionary(&[&text]).unwrap();
                        prop_assert_eq!(&again[0].value, &m.value);
                    }
                }
            }
        }
    }
}
