//! The scan behind [`super::positions::Positions`]: YAML's token and event rules (libyaml's
//! `yaml_parser_fetch_*` and `yaml_parser_parse`), reduced to what lines need, over text
//! serde_yaml has already accepted. Out: for each document, the line of every path.

use std::collections::BTreeMap;

/// Line (1-based) of every path (`spec.ports[1].port`, `""` for the document) in every
/// document of `text`; past anything the scan cannot follow, what was read before it.
pub fn index(text: &str) -> Vec<BTreeMap<String, usize>> {
    let tokens = Scanner::new(text).run();
    let mut indexer = Indexer::default();
    let _ = Parser {
        tokens: &tokens,
        at: 0,
        out: &mut indexer,
    }
    .stream();
    indexer.docs
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directive,
    DocStart,
    DocEnd,
    BlockSeqStart,
    BlockMapStart,
    BlockEnd,
    BlockEntry,
    FlowSeqStart,
    FlowSeqEnd,
    FlowMapStart,
    FlowMapEnd,
    FlowEntry,
    Key,
    Value,
    Alias,
    Anchor,
    Tag,
    Scalar,
    StreamEnd,
}

/// A token and the line (1-based) it starts on; `text` is a scalar's value.
#[derive(Debug)]
struct Token {
    kind: Kind,
    line: usize,
    text: String,
}

/// Where a scalar, flow collection, anchor, alias or tag that may turn out to be a key began.
#[derive(Clone, Copy)]
struct SimpleKey {
    token: usize,
    line: usize,
    col: usize,
    at: usize,
}

/// The YAML token scanner, reduced to what lines need (libyaml's `yaml_parser_fetch_*`).
struct Scanner<'a> {
    text: &'a str,
    /// Byte offset.
    at: usize,
    line: usize,
    /// Column, in characters.
    col: usize,
    flow: usize,
    /// The current block indentation and the enclosing ones (-1: none).
    indent: isize,
    indents: Vec<isize>,
    /// The possible simple key of each flow level (the block level first).
    keys: Vec<Option<SimpleKey>>,
    key_allowed: bool,
    /// In flow context, where a `:` right after a quoted key or a collection is a value
    /// (JSON's `"key":value`).
    adjacent_value_at: Option<usize>,
    tokens: Vec<Token>,
}

fn is_blank(c: Option<char>) -> bool {
    matches!(c, Some(' ' | '\t'))
}

fn is_break(c: Option<char>) -> bool {
    matches!(c, Some('\n' | '\r'))
}

fn is_blankz(c: Option<char>) -> bool {
    c.is_none() || is_blank(c) || is_break(c)
}

fn is_flow(c: Option<char>) -> bool {
    matches!(c, Some(',' | '[' | ']' | '{' | '}'))
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            at: if text.starts_with('\u{feff}') { 3 } else { 0 },
            line: 1,
            col: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            keys: vec![None],
            key_allowed: true,
            adjacent_value_at: None,
            tokens: Vec::new(),
        }
    }

    fn cur(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn next(&self) -> Option<char> {
        self.text[self.at..].chars().nth(1)
    }

    /// Moves past one character; `\r\n` is one line break, as in YAML.
    fn bump(&mut self) {
        let Some(c) = self.cur() else { return };
        self.at += c.len_utf8();
        match c {
            '\n' => self.new_line(),
            '\r' if self.cur() != Some('\n') => self.new_line(),
            '\r' => {}
            _ => self.col += 1,
        }
    }

    fn new_line(&mut self) {
        self.line += 1;
        self.col = 0;
    }

    fn skip_line(&mut self) {
        while self.cur().is_some() && !is_break(self.cur()) {
            self.bump();
        }
    }

    fn push(&mut self, kind: Kind, line: usize, text: String) {
        self.tokens.push(Token { kind, line, text });
    }

    /// `---` or `...` opening a line, then a blank or the end.
    fn at_document_marker(&self) -> bool {
        let rest = &self.text[self.at..];
        self.col == 0
            && (rest.starts_with("---") || rest.starts_with("..."))
            && is_blankz(rest[3..].chars().next())
    }

    fn run(mut self) -> Vec<Token> {
        loop {
            self.skip_to_next_token();
            // A simple key is one line long at most in block context (and 1024 characters).
            if self.flow == 0 {
                let (line, at) = (self.line, self.at);
                for key in &mut self.keys {
                    if key.is_some_and(|k| k.line < line || k.at + 1024 < at) {
                        *key = None;
                    }
                }
            }
            self.unroll(self.col as isize);
            let Some(c) = self.cur() else {
                self.unroll(-1);
                self.push(Kind::StreamEnd, self.line, String::new());
                return self.tokens;
            };
            let next = self.next();
            let line = self.line;
            if (self.col == 0 && c == '%') || self.at_document_marker() {
                self.unroll(-1);
                self.remove_key();
                self.key_allowed = false;
                let kind = match c {
                    '%' => Kind::Directive,
                    '-' => Kind::DocStart,
                    _ => Kind::DocEnd,
                };
                self.push(kind, line, String::new());
                if c == '%' {
                    self.skip_line();
                } else {
                    (0..3).for_each(|_| self.bump());
                }
                continue;
            }
            match c {
                '[' | '{' => {
                    self.save_key();
                    self.flow += 1;
                    self.keys.push(None);
                    self.key_allowed = true;
                    let kind = if c == '[' {
                        Kind::FlowSeqStart
                    } else {
                        Kind::FlowMapStart
                    };
                    self.push(kind, line, String::new());
                    self.bump();
                }
                ']' | '}' => {
                    self.remove_key();
                    if self.flow > 0 {
                        self.flow -= 1;
                        self.keys.pop();
                    }
                    self.key_allowed = false;
                    let kind = if c == ']' {
                        Kind::FlowSeqEnd
                    } else {
                        Kind::FlowMapEnd
                    };
                    self.push(kind, line, String::new());
                    self.bump();
                    self.adjacent_value();
                }
                ',' => {
                    self.remove_key();
                    self.key_allowed = true;
                    self.push(Kind::FlowEntry, line, String::new());
                    self.bump();
                }
                '-' if is_blankz(next) => {
                    self.roll(self.col, None, Kind::BlockSeqStart, line);
                    self.remove_key();
                    self.key_allowed = true;
                    self.push(Kind::BlockEntry, line, String::new());
                    self.bump();
                }
                '?' if is_blankz(next) => {
                    self.roll(self.col, None, Kind::BlockMapStart, line);
                    self.remove_key();
                    self.key_allowed = self.flow == 0;
                    self.push(Kind::Key, line, String::new());
                    self.bump();
                }
                ':' if is_blankz(next)
                    || (self.flow > 0
                        && (is_flow(next) || self.adjacent_value_at == Some(self.at))) =>
                {
                    self.value(line);
                }
                '*' | '&' | '!' => {
                    self.save_key();
                    self.key_allowed = false;
                    let kind = match c {
                        '*' => Kind::Alias,
                        '&' => Kind::Anchor,
                        _ => Kind::Tag,
                    };
                    self.push(kind, line, String::new());
                    self.bump();
                    while !(is_blankz(self.cur()) || self.flow > 0 && is_flow(self.cur())) {
                        self.bump();
                    }
                }
                '|' | '>' if self.flow == 0 => {
                    self.remove_key();
                    self.key_allowed = true;
                    let line = self.block_scalar();
                    self.push(Kind::Scalar, line, String::new());
                }
                '\'' | '"' => {
                    self.save_key();
                    self.key_allowed = false;
                    let text = self.quoted(c);
                    self.push(Kind::Scalar, line, text);
                    self.adjacent_value();
                }
                _ => {
                    self.save_key();
                    self.key_allowed = false;
                    let text = self.plain();
                    self.push(Kind::Scalar, line, text);
                }
            }
        }
    }

    /// Spaces, tabs, comments and line breaks; a line break in block context allows a key.
    fn skip_to_next_token(&mut self) {
        loop {
            match self.cur() {
                Some(' ' | '\t' | '\u{feff}') => self.bump(),
                Some('#') => self.skip_line(),
                Some('\n' | '\r') => {
                    self.bump();
                    if self.flow == 0 {
                        self.key_allowed = true;
                    }
                }
                _ => return,
            }
        }
    }

    fn adjacent_value(&mut self) {
        if self.flow > 0 {
            self.adjacent_value_at = Some(self.at);
        }
    }

    fn save_key(&mut self) {
        if self.key_allowed {
            let key = SimpleKey {
                token: self.tokens.len(),
                line: self.line,
                col: self.col,
                at: self.at,
            };
            if let Some(last) = self.keys.last_mut() {
                *last = Some(key);
            }
        }
    }

    fn remove_key(&mut self) {
        if let Some(last) = self.keys.last_mut() {
            *last = None;
        }
    }

    /// Opens a block collection at `col` when it is deeper than the current one; its start
    /// token goes at index `token` (before a simple key found late) or at the end.
    fn roll(&mut self, col: usize, token_index: Option<usize>, kind: Kind, line: usize) {
        if self.flow > 0 || self.indent >= col as isize {
            return;
        }
        self.indents.push(self.indent);
        self.indent = col as isize;
        let token = Token {
            kind,
            line,
            text: String::new(),
        };
        match token_index {
            Some(at) => self.tokens.insert(at, token),
            None => self.tokens.push(token),
        }
    }

    /// Closes the block collections deeper than `col`.
    fn unroll(&mut self, col: isize) {
        if self.flow > 0 {
            return;
        }
        while self.indent > col {
            self.indent = self.indents.pop().unwrap_or(-1);
            self.push(Kind::BlockEnd, self.line, String::new());
        }
    }

    /// A `:`: the simple key waiting on this level, if any, gets its `Key` token (and in block
    /// context the mapping start, on the line of the `:`) inserted before it.
    fn value(&mut self, line: usize) {
        match self.keys.last_mut().and_then(Option::take) {
            Some(key) => {
                self.tokens.insert(
                    key.token,
                    Token {
                        kind: Kind::Key,
                        line: key.line,
                        text: String::new(),
                    },
                );
                self.roll(key.col, Some(key.token), Kind::BlockMapStart, line);
                self.key_allowed = false;
            }
            None => {
                self.roll(self.col, None, Kind::BlockMapStart, line);
                self.key_allowed = self.flow == 0;
            }
        }
        self.push(Kind::Value, line, String::new());
        self.bump();
    }

    /// A plain scalar, possibly over several lines (folded with spaces: only keys, which
    /// are one line long, need the text).
    fn plain(&mut self) -> String {
        let indent = self.indent + 1;
        let mut text = String::new();
        let mut spaces = String::new();
        let mut broke = false;
        loop {
            if self.at_document_marker() || self.cur() == Some('#') {
                break;
            }
            if !is_blankz(self.cur()) && self.plain_continues() {
                if broke {
                    text.push(' ');
                    broke = false;
                } else {
                    text.push_str(&spaces);
                }
                spaces.clear();
                while !is_blankz(self.cur()) && self.plain_continues() {
                    text.extend(self.cur());
                    self.bump();
                }
            }
            if !is_blank(self.cur()) && !is_break(self.cur()) {
                break;
            }
            while is_blank(self.cur()) || is_break(self.cur()) {
                if is_break(self.cur()) {
                    broke = true;
                    spaces.clear();
                } else if !broke {
                    spaces.extend(self.cur());
                }
                self.bump();
            }
            if self.flow == 0 && (self.col as isize) < indent {
                break;
            }
        }
        if broke {
            self.key_allowed = true;
        }
        text
    }

    fn plain_continues(&self) -> bool {
        let (c, next) = (self.cur(), self.next());
        let value = c == Some(':') && (is_blankz(next) || (self.flow > 0 && is_flow(next)));
        !(value || self.flow > 0 && is_flow(c))
    }

    /// A single- or double-quoted scalar, decoded (line folding approximated by one space).
    fn quoted(&mut self, quote: char) -> String {
        self.bump();
        let mut text = String::new();
        while let Some(c) = self.cur() {
            if c == quote {
                self.bump();
                if quote == '\'' && self.cur() == Some('\'') {
                    text.push('\'');
                    self.bump();
                    continue;
                }
                break;
            }
            if is_break(Some(c)) {
                text.truncate(text.trim_end_matches([' ', '\t']).len());
                text.push(' ');
                while is_blankz(self.cur()) && self.cur().is_some() {
                    self.bump();
                }
                continue;
            }
            self.bump();
            if c != '\\' || quote == '\'' {
                text.push(c);
                continue;
            }
            let Some(e) = self.cur() else { break };
            if is_break(Some(e)) {
                while is_blankz(self.cur()) && self.cur().is_some() {
                    self.bump();
                }
                continue;
            }
            self.bump();
            let hex = match e {
                'x' => 2,
                'u' => 4,
                'U' => 8,
                _ => 0,
            };
            if hex > 0 {
                let end = (self.at + hex).min(self.text.len());
                let digits = self.text.get(self.at..end).unwrap_or("");
                text.extend(
                    u32::from_str_radix(digits, 16)
                        .ok()
                        .and_then(char::from_u32),
                );
                (0..hex).for_each(|_| self.bump());
                continue;
            }
            text.push(match e {
                '0' => '\0',
                'a' => '\x07',
                'b' => '\x08',
                't' | '\t' => '\t',
                'n' => '\n',
                'v' => '\x0b',
                'f' => '\x0c',
                'r' => '\r',
                'e' => '\x1b',
                'N' => '\u{85}',
                '_' => '\u{a0}',
                'L' => '\u{2028}',
                'P' => '\u{2029}',
                other => other,
            });
        }
        text
    }

    /// A `|` or `>` scalar: its header, then every line indented at least as much as its
    /// first one (or as its explicit indentation indicator says), and the empty lines
    /// between. The text is not kept: block scalars are never simple keys. Its line, as
    /// yaml-rust2 gave it (the reader of before): the first line after the header that is
    /// not empty, or the header's at the end of the text.
    fn block_scalar(&mut self) -> usize {
        let mut line = self.line;
        let mut first = true;
        self.bump();
        let mut increment = None;
        while let Some(c @ ('+' | '-' | '1'..='9')) = self.cur() {
            if let Some(digit) = c.to_digit(10) {
                increment = Some(digit as isize);
            }
            self.bump();
        }
        self.skip_line();
        self.bump();
        let parent = self.indent.max(0);
        let mut indent = increment.map(|i| if self.indent >= 0 { self.indent + i } else { i });
        let mut blank_width = 0;
        loop {
            let rest = &self.text[self.at..];
            let spaces = rest.len() - rest.trim_start_matches(' ').len();
            let after = rest[spaces..].chars().next();
            if after.is_none() {
                break;
            }
            if first && !is_break(after) {
                line = self.line;
                first = false;
            }
            if is_break(after) {
                // An empty line (spaces only) belongs to the scalar, whatever its width.
                blank_width = blank_width.max(spaces as isize);
                self.skip_line();
                self.bump();
                continue;
            }
            if self.at_document_marker() {
                break;
            }
            let needed =
                *indent.get_or_insert((spaces as isize).max(blank_width).max(parent + 1).max(1));
            if (spaces as isize) < needed {
                break;
            }
            self.skip_line();
            self.bump();
        }
        line
    }
}

/// The events of the YAML parser (libyaml's `yaml_parser_parse`), fed to the indexer with
/// the line of the token each comes from.
struct Parser<'t, 'o> {
    tokens: &'t [Token],
    at: usize,
    out: &'o mut Indexer,
}

/// Nesting followed at most: serde_yaml refuses deeper files (its limit is 128).
const MAX_DEPTH: usize = 256;

enum Event<'t> {
    DocumentStart,
    MappingStart,
    SequenceStart,
    Scalar(&'t str),
    Alias,
    End,
}

/// An empty scalar (a key or value left out) names the path with an empty key.
const EMPTY: Event<'static> = Event::Scalar("");

impl<'t> Parser<'t, '_> {
    fn kind(&self) -> Kind {
        self.tokens.get(self.at).map_or(Kind::StreamEnd, |t| t.kind)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |t| t.line)
    }

    fn is(&self, kinds: &[Kind]) -> bool {
        kinds.contains(&self.kind())
    }

    fn emit(&mut self, event: Event<'t>, line: usize) {
        self.out.on_event(event, line);
    }

    /// An empty scalar, placed at the next token as libyaml places it.
    fn empty(&mut self) {
        self.emit(EMPTY, self.line());
    }

    fn stream(&mut self) -> Option<()> {
        let mut implicit = true;
        loop {
            while self.kind() == Kind::DocEnd {
                self.at += 1;
                implicit = true;
            }
            match self.kind() {
                Kind::StreamEnd => return Some(()),
                Kind::Directive | Kind::DocStart => {
                    while self.kind() == Kind::Directive {
                        self.at += 1;
                    }
                    if self.kind() != Kind::DocStart {
                        return None;
                    }
                    self.emit(Event::DocumentStart, self.line());
                    self.at += 1;
                    use Kind::*;
                    if self.is(&[Directive, DocStart, DocEnd, StreamEnd]) {
                        self.empty();
                    } else {
                        self.node(true, false, 0)?;
                    }
                }
                _ if implicit => {
                    self.emit(Event::DocumentStart, self.line());
                    self.node(true, false, 0)?;
                }
                _ => return None,
            }
            implicit = false;
        }
    }

    fn node(&mut self, block: bool, indentless: bool, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let line = self.line();
        if self.kind() == Kind::Alias {
            self.at += 1;
            self.emit(Event::Alias, line);
            return Some(());
        }
        let mut properties = false;
        while self.is(&[Kind::Anchor, Kind::Tag]) {
            self.at += 1;
            properties = true;
        }
        let line = self.line();
        let depth = depth + 1;
        match self.kind() {
            Kind::BlockEntry if indentless => {
                self.emit(Event::SequenceStart, line);
                self.indentless_sequence(depth)
            }
            Kind::Scalar => {
                let text = &self.tokens[self.at].text;
                self.at += 1;
                self.emit(Event::Scalar(text), line);
                Some(())
            }
            Kind::FlowSeqStart => {
                self.at += 1;
                self.emit(Event::SequenceStart, line);
                self.flow_sequence(depth)
            }
            Kind::FlowMapStart => {
                self.at += 1;
                self.emit(Event::MappingStart, line);
                self.flow_mapping(depth)
            }
            Kind::BlockSeqStart if block => {
                self.at += 1;
                self.emit(Event::SequenceStart, line);
                self.block_sequence(depth)
            }
            Kind::BlockMapStart if block => {
                self.at += 1;
                self.emit(Event::MappingStart, line);
                self.block_mapping(depth)
            }
            _ if properties => {
                self.empty();
                Some(())
            }
            _ => None,
        }
    }

    /// Ends a collection at the current token, consuming it when `consume`.
    fn end(&mut self, consume: bool) -> Option<()> {
        self.emit(Event::End, self.line());
        self.at += usize::from(consume);
        Some(())
    }

    fn block_mapping(&mut self, depth: usize) -> Option<()> {
        use Kind::*;
        loop {
            match self.kind() {
                Key => {
                    self.at += 1;
                    if self.is(&[Key, Value, BlockEnd]) {
                        self.empty();
                    } else {
                        self.node(true, true, depth)?;
                    }
                }
                Value => self.empty(),
                BlockEnd => return self.end(true),
                _ => return None,
            }
            if self.kind() == Value {
                self.at += 1;
                if self.is(&[Key, Value, BlockEnd]) {
                    self.empty();
                } else {
                    self.node(true, true, depth)?;
                }
            } else {
                self.empty();
            }
        }
    }

    fn block_sequence(&mut self, depth: usize) -> Option<()> {
        use Kind::*;
        loop {
            match self.kind() {
                BlockEnd => return self.end(true),
                BlockEntry => {
                    self.at += 1;
                    if self.is(&[BlockEntry, BlockEnd]) {
                        self.empty();
                    } else {
                        self.node(true, false, depth)?;
                    }
                }
                _ => return None,
            }
        }
    }

    fn indentless_sequence(&mut self, depth: usize) -> Option<()> {
        use Kind::*;
        while self.kind() == BlockEntry {
            self.at += 1;
            if self.is(&[BlockEntry, Key, Value, BlockEnd]) {
                self.empty();
            } else {
                self.node(true, false, depth)?;
            }
        }
        self.end(false)
    }

    fn flow_sequence(&mut self, depth: usize) -> Option<()> {
        use Kind::*;
        let mut first = true;
        loop {
            if !first && self.kind() == FlowEntry {
                self.at += 1;
            } else if !first && self.kind() != FlowSeqEnd {
                return None;
            }
            first = false;
            match self.kind() {
                FlowSeqEnd => return self.end(true),
                // `[a: b]`: a mapping of one pair.
                Key => {
                    self.emit(Event::MappingStart, self.line());
                    self.at += 1;
                    self.flow_pair(FlowSeqEnd, depth)?;
                    self.end(false)?;
                }
                _ => self.node(false, false, depth)?,
            }
        }
    }

    fn flow_mapping(&mut self, depth: usize) -> Option<()> {
        use Kind::*;
        let mut first = true;
        loop {
            if !first && self.kind() == FlowEntry {
                self.at += 1;
            } else if !first && self.kind() != FlowMapEnd {
                return None;
            }
            first = false;
            match self.kind() {
                FlowMapEnd => return self.end(true),
                Key => {
                    self.at += 1;
                    self.flow_pair(FlowMapEnd, depth)?;
                }
                Value => self.flow_pair(FlowMapEnd, depth)?,
                // `{a, b}`: keys with empty values.
                _ => {
                    self.node(false, false, depth)?;
                    self.empty();
                }
            }
        }
    }

    /// The key (after its `?`, if any) and the value of one flow pair ending at `close`.
    fn flow_pair(&mut self, close: Kind, depth: usize) -> Option<()> {
        use Kind::*;
        if self.is(&[Value, FlowEntry, close]) {
            self.empty();
        } else {
            self.node(false, false, depth)?;
        }
        if self.kind() != Value {
            self.empty();
            return Some(());
        }
        self.at += 1;
        if self.is(&[FlowEntry, close]) {
            self.empty();
            Some(())
        } else {
            self.node(false, false, depth)
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

/// Builds the path → line maps from the events: the first line a path is met on wins (a
/// key's own line, an item's first token).
#[derive(Default)]
struct Indexer {
    docs: Vec<BTreeMap<String, usize>>,
    stack: Vec<Frame>,
}

impl Indexer {
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(key) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    path.push_str(&format!("[{index}]"));
                }
            }
        }
        path
    }

    fn record(&mut self, line: usize) {
        let path = self.path();
        if let Some(doc) = self.docs.last_mut() {
            doc.entry(path).or_insert(line);
        }
    }

    /// A value (scalar, alias or closed collection) just ended: move the parent along.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }

    fn on_event(&mut self, event: Event, line: usize) {
        match event {
            Event::DocumentStart => {
                self.docs.push(BTreeMap::new());
                self.stack.clear();
                self.record(line);
            }
            Event::Scalar(value) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(value.to_string());
                    }
                    self.record(line);
                } else {
                    self.record(line);
                    self.value_done();
                }
            }
            Event::Alias => {
                self.record(line);
                self.value_done();
            }
            Event::MappingStart => {
                if self.expecting_key() {
                    // A complex key (`? {a: b}`): index it under a placeholder name.
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some("?".into());
                    }
                }
                self.record(line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart => {
                self.record(line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::End => {
                self.stack.pop();
                self.value_done();
            }
        }
    }
}
