//! LZF decompression, for the few RDB strings this crate must read rather than pass through:
//! keys, AUX fields and function code. Redis compresses any string longer than 20 bytes when
//! `rdbcompression yes` (the default) and compression saves space, keys included.
//!
//! The format (liblzf): a control byte below 32 starts a literal run of `ctrl + 1` bytes;
//! otherwise it is a back reference of length `(ctrl >> 5) + 2` (an extra length byte follows
//! when the 3-bit field is 7) to `((ctrl & 0x1f) << 8) + next byte + 1` bytes back.

/// Decompresses `input`, which must expand to exactly `out_len` bytes. Errors are messages for
/// [`crate::RdbError::Corrupt`]; nothing is allocated beyond `out_len`, which the caller has
/// already checked against its size limit.
pub(crate) fn decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, &'static str> {
    // The best LZF can do is a 3-byte back reference expanding to 264 bytes, so a larger
    // claim is corrupt; checking it first keeps a lying header from reserving memory.
    if out_len > input.len().saturating_mul(88) {
        return Err("LZF declared size impossible for its compressed size");
    }
    let mut out = Vec::with_capacity(out_len);
    let mut i = 0;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input.get(i..i + run).ok_or("LZF literal run past the end of the input")?;
            if out.len() + run > out_len {
                return Err("LZF output longer than declared");
            }
            out.extend_from_slice(lit);
            i += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*input.get(i).ok_or("LZF back reference truncated")?);
                i += 1;
            }
            len += 2;
            let low = usize::from(*input.get(i).ok_or("LZF back reference truncated")?);
            i += 1;
            let distance = ((ctrl & 0x1f) << 8) + low + 1;
            if distance > out.len() {
                return Err("LZF back reference before the start of the output");
            }
            if out.len() + len > out_len {
                return Err("LZF output longer than declared");
            }
            // Byte by byte: the source may overlap what is being written (runs).
            let start = out.len() - distance;
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        }
    }
    if out.len() != out_len {
        return Err("LZF output shorter than declared");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_back_references() {
        // "abc" literal, then a back reference of length 6 at distance 3: "abcabcabc".
        let input = [2, b'a', b'b', b'c', (4 << 5), 2];
        assert_eq!(decompress(&input, 9).unwrap(), b"abcabcabc");
        // Long reference: ctrl length field 7 plus an extra byte (7 + 3 + 2 = 12).
        let input = [0, b'x', (7 << 5), 3, 0];
        assert_eq!(decompress(&input, 13).unwrap(), vec![b'x'; 13]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(decompress(&[5, b'a'], 6).is_err()); // literal past the end
        assert!(decompress(&[0, b'a', (1 << 5), 5], 4).is_err()); // reference before start
        assert!(decompress(&[0, b'a'], 2).is_err()); // too short
        assert!(decompress(&[1, b'a', b'b'], 1).is_err()); // too long
        assert!(decompress(&[0, b'a', (7 << 5)], 20).is_err()); // truncated reference
        assert!(decompress(&[0, b'a'], 1000).is_err()); // impossible ratio
    }
}
