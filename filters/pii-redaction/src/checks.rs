//! Validity checks that turn shape matches into findings: Luhn, IBAN mod-97 and lengths,
//! SSN ranges, dates, JWT headers. A bare regex stops at the shape; these are why a
//! Luhn-invalid number, an SSN in the 9xx area or an IBAN with a wrong checksum passes.

use base64::Engine;

/// Luhn checksum over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Payment card issuer prefixes: Mastercard 2-series, Amex / Diners / JCB 3,
/// Visa 4, Mastercard / Maestro 5, Discover / Maestro / UnionPay 6, and JCB's 15-digit
/// `1800` range.
pub fn card_prefix(digits: &[u8]) -> bool {
    matches!(digits.first(), Some(b'2'..=b'6')) || digits.starts_with(b"1800")
}

/// US SSN rules: area not 000, 666 or 900-999; group not 00; serial not 0000.
pub fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000"
        && area != b"666"
        && area.first() != Some(&b'9')
        && group != b"00"
        && serial != b"0000"
}

/// IBAN length per country (SWIFT IBAN registry).
pub fn iban_length(country: [u8; 2]) -> Option<usize> {
    let len = match &country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HN" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(len)
}

/// ISO 13616 check: move the first four characters to the end, letters to 10..35, the
/// number mod 97 must be 1. `iban` is upper-case alphanumerics without spaces.
pub fn iban_checksum(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem = 0u32;
    for &c in tail.iter().chain(head) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// Is this (y, m, d) shaped group a plausible calendar date? Used to keep dates out of
/// phone numbers.
pub fn plausible_date(year: u32, month: u32, day: u32) -> bool {
    (1000..=2999).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// A JWT's first segment: base64url of a JSON object that names its algorithm.
pub fn jwt_header(segment: &[u8]) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment) else {
        return false;
    };
    decoded.first() == Some(&b'{') && decoded.windows(5).any(|w| w == b"\"alg\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_valid_and_rejects_off_by_one() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"378282246310005"));
        assert!(luhn(b"6011111111111117"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b"41111x1111111111"));
    }

    #[test]
    fn iban_lengths_and_checksums() {
        assert_eq!(iban_length(*b"DE"), Some(22));
        assert_eq!(iban_length(*b"ZZ"), None);
        assert!(iban_checksum(b"DE89370400440532013000"));
        assert!(iban_checksum(b"GB82WEST12345698765432"));
        assert!(iban_checksum(b"NO9386011117947"));
        assert!(!iban_checksum(b"DE89370400440532013001"));
        assert!(!iban_checksum(b"GB82WEST1234569876543a"));
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_valid(b"123", b"45", b"6789"));
        for (a, g, s) in [
            (&b"000"[..], &b"12"[..], &b"3456"[..]),
            (b"666", b"12", b"3456"),
            (b"900", b"12", b"3456"),
            (b"123", b"00", b"3456"),
            (b"123", b"45", b"0000"),
        ] {
            assert!(!ssn_valid(a, g, s));
        }
    }

    #[test]
    fn jwt_headers() {
        // {"alg":"HS256","typ":"JWT"}
        assert!(jwt_header(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        // {"sub":"1"} has no alg
        assert!(!jwt_header(b"eyJzdWIiOiIxIn0"));
        assert!(!jwt_header(b"eyJ!!"));
    }
}
