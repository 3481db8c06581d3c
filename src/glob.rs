//! Glob patterns over slash-separated names (repositories, tags): ACL rules and immutable
//! tags share one syntax.

/// Matches `name` against a glob: `**` any characters, `*` any but `/`, `?` one but `/`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    matches(&tokens(pattern, None), name)
}

/// Like [`glob_match`], with every `${user}` in `pattern` standing for `user` literally: a `*`
/// or `?` in the user's name matches only itself, never other names.
pub fn glob_match_user(pattern: &str, user: &str, name: &str) -> bool {
    matches(&tokens(pattern, Some(user)), name)
}

#[derive(Clone, Copy)]
enum Token {
    Byte(u8),
    One,
    Segment,
    Anything,
}

const USER: &[u8] = b"${user}";

fn tokens(pattern: &str, user: Option<&str>) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(pattern.len());
    let p = pattern.as_bytes();
    let mut i = 0;
    while i < p.len() {
        if let Some(user) = user
            && p[i..].starts_with(USER)
        {
            tokens.extend(user.bytes().map(Token::Byte));
            i += USER.len();
            continue;
        }
        match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                tokens.push(Token::Anything);
                i += 2;
            }
            b'*' => {
                tokens.push(Token::Segment);
                i += 1;
            }
            b'?' => {
                tokens.push(Token::One);
                i += 1;
            }
            b => {
                tokens.push(Token::Byte(b));
                i += 1;
            }
        }
    }
    tokens
}

fn matches(tokens: &[Token], name: &str) -> bool {
    let n = name.as_bytes();
    // matches[j]: whether the tokens seen so far match n[..j]; one row per token.
    let mut matches = vec![false; n.len() + 1];
    matches[0] = true;
    for &token in tokens {
        let mut next = vec![false; n.len() + 1];
        match token {
            Token::Byte(b) => {
                for j in 0..n.len() {
                    next[j + 1] = matches[j] && n[j] == b;
                }
            }
            Token::One => {
                for j in 0..n.len() {
                    next[j + 1] = matches[j] && n[j] != b'/';
                }
            }
            Token::Segment => {
                next[0] = matches[0];
                for j in 0..n.len() {
                    next[j + 1] = matches[j + 1] || (next[j] && n[j] != b'/');
                }
            }
            Token::Anything => {
                next[0] = matches[0];
                for j in 0..n.len() {
                    next[j + 1] = matches[j + 1] || next[j];
                }
            }
        }
        matches = next;
    }
    matches[n.len()]
}
