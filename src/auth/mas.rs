//! MAS opaque tokens carry a CRC32 of their own text, so a mistyped, forged
//! or truncated one is refused offline: a flood of made-up tokens costs the
//! identity provider nothing. Format per MAS `crates/data-model/src/tokens.rs`:
//! `{prefix}_{30 alphanumerics}_{base62(crc32("{prefix}_{random}")), 6 chars}`.

use std::str::FromStr;

/// What a MAS-shaped token says it is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasTokenKind {
    AccessToken,
    RefreshToken,
    CompatAccessToken,
    CompatRefreshToken,
    PersonalAccessToken,
}

impl MasTokenKind {
    /// The prefix of a MAS-shaped token, if it has one.
    pub fn of(token: &str) -> Option<Self> {
        // Every prefix has three letters: no need to scan a long JWT for `_`.
        if token.as_bytes().get(3) != Some(&b'_') {
            return None;
        }
        match &token[..3] {
            "mat" => Some(MasTokenKind::AccessToken),
            "mar" => Some(MasTokenKind::RefreshToken),
            "mct" => Some(MasTokenKind::CompatAccessToken),
            "mcr" => Some(MasTokenKind::CompatRefreshToken),
            "mpt" => Some(MasTokenKind::PersonalAccessToken),
            _ => None,
        }
    }

    pub fn prefix(self) -> &'static str {
        match self {
            MasTokenKind::AccessToken => "mat",
            MasTokenKind::RefreshToken => "mar",
            MasTokenKind::CompatAccessToken => "mct",
            MasTokenKind::CompatRefreshToken => "mcr",
            MasTokenKind::PersonalAccessToken => "mpt",
        }
    }

    /// A token of this kind in MAS's format around `random` (30 alphanumerics),
    /// for stubs, tests and the demo.
    pub fn token_with(self, random: &str) -> String {
        let base = format!("{}_{random}", self.prefix());
        let crc = base62_crc(&base);
        format!("{base}_{}", String::from_utf8_lossy(&crc))
    }

    pub fn is_refresh(self) -> bool {
        matches!(
            self,
            MasTokenKind::RefreshToken | MasTokenKind::CompatRefreshToken
        )
    }
}

/// A MAS token whose checksum holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasToken {
    pub kind: MasTokenKind,
}

/// Why a MAS-shaped token was refused offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasTokenError {
    UnknownPrefix,
    /// Not three `_`-separated parts of 3, 30 and 6 alphanumerics.
    Malformed,
    BadChecksum,
}

impl MasTokenError {
    pub fn reason(self) -> &'static str {
        match self {
            MasTokenError::UnknownPrefix => "unknown MAS token prefix",
            MasTokenError::Malformed => "malformed MAS token",
            MasTokenError::BadChecksum => "MAS token checksum mismatch",
        }
    }
}

impl FromStr for MasToken {
    type Err = MasTokenError;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let kind = MasTokenKind::of(token).ok_or(MasTokenError::UnknownPrefix)?;
        let mut parts = token.split('_');
        let (Some(prefix), Some(random), Some(crc), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MasTokenError::Malformed);
        };
        let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
        if prefix.len() != 3
            || random.len() != 30
            || crc.len() != 6
            || !alnum(random)
            || !alnum(crc)
        {
            return Err(MasTokenError::Malformed);
        }
        let base = &token[..prefix.len() + 1 + random.len()];
        if crc.as_bytes() != base62_crc(base).as_slice() {
            return Err(MasTokenError::BadChecksum);
        }
        Ok(MasToken { kind })
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MAS's `base62_encode`: digits least significant first, then left-padded
/// with `0` to six characters (unlike Synapse, which writes most significant first).
fn base62_crc(base: &str) -> [u8; 6] {
    let mut n = crc32fast::hash(base.as_bytes());
    let mut digits = Vec::with_capacity(6);
    while n > 0 {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    let mut out = [b'0'; 6];
    let pad = 6usize.saturating_sub(digits.len());
    for (slot, digit) in out[pad..].iter_mut().zip(digits) {
        *slot = digit;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // matrix-facts.md §3, from MAS compat/login.rs and personal_sessions/regenerate.rs.
    const COMPAT: &str = "mct_16tugBE5Ta9LIWoSJaAEHHq2g3fx8S_alcBB4";
    const PERSONAL: &str = "mpt_6cq7FqNSYoosbXl3bbpfh9yNy9NzuR_0vOV2O";

    #[test]
    fn published_vectors_pass() {
        assert_eq!(crc32fast::hash(&COMPAT.as_bytes()[..34]), 3829841654);
        assert_eq!(crc32fast::hash(&PERSONAL.as_bytes()[..34]), 355229429);
        assert_eq!(
            COMPAT.parse::<MasToken>().unwrap().kind,
            MasTokenKind::CompatAccessToken
        );
        assert_eq!(
            PERSONAL.parse::<MasToken>().unwrap().kind,
            MasTokenKind::PersonalAccessToken
        );
    }

    #[test]
    fn any_one_character_change_fails() {
        for token in [COMPAT, PERSONAL] {
            for i in 4..token.len() {
                if token.as_bytes()[i] == b'_' {
                    continue;
                }
                let mut bytes = token.as_bytes().to_vec();
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                let changed = String::from_utf8(bytes).unwrap();
                assert!(changed.parse::<MasToken>().is_err(), "{changed}");
            }
        }
    }

    #[test]
    fn shape_errors_are_told_apart() {
        assert_eq!(
            "xyz_a_b".parse::<MasToken>(),
            Err(MasTokenError::UnknownPrefix)
        );
        assert_eq!(
            "mat_short_abcdef".parse::<MasToken>(),
            Err(MasTokenError::Malformed)
        );
        assert_eq!(
            format!("{COMPAT}_x").parse::<MasToken>(),
            Err(MasTokenError::Malformed)
        );
        let bad = "mat_16tugBE5Ta9LIWoSJaAEHHq2g3fx8S_alcBB4";
        assert_eq!(bad.parse::<MasToken>(), Err(MasTokenError::BadChecksum));
    }

    #[test]
    fn refresh_prefixes_are_known() {
        assert!(MasTokenKind::of("mar_x").unwrap().is_refresh());
        assert!(MasTokenKind::of("mcr_x").unwrap().is_refresh());
        assert!(!MasTokenKind::of("mat_x").unwrap().is_refresh());
        assert_eq!(MasTokenKind::of("syt_x"), None);
        // The prefix is what comes before the first `_`, exactly.
        for not_mas in ["mat", "matx_y", "ma_t_y", "mat-x_y", "m\u{e9}t_x", ""] {
            assert_eq!(MasTokenKind::of(not_mas), None, "{not_mas}");
        }
    }

    #[test]
    fn minted_tokens_round_trip() {
        let random = &COMPAT[4..34];
        assert_eq!(MasTokenKind::CompatAccessToken.token_with(random), COMPAT);
        let mar = MasTokenKind::RefreshToken.token_with(random);
        assert_eq!(
            mar.parse::<MasToken>().unwrap().kind,
            MasTokenKind::RefreshToken
        );
    }
}
