//! The few AML (ACPI Machine Language) constructs the DSDT needs: scopes,
//! devices, names, integers, strings, buffers and packages
//! (ACPI 6.5 chapter 20).

/// Package length: 1 byte below 64, else a lead byte with the count of
/// following bytes and the low nibble, then 8 bits per byte.
pub fn pkg_length(content_len: usize) -> Vec<u8> {
    // The encoded length includes the length bytes themselves.
    for extra in 0..4usize {
        let total = content_len + 1 + extra;
        let fits = match extra {
            0 => total < 0x40,
            1 => total < 0x1000,
            2 => total < 0x10_0000,
            _ => total < 0x1000_0000,
        };
        if fits {
            if extra == 0 {
                return vec![total as u8];
            }
            let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
            return v;
        }
    }
    panic!("AML package too large");
}

/// A name path: `\` prefix allowed, then 4-character segments joined by `.`.
pub fn name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = path;
    if let Some(rest) = p.strip_prefix('\\') {
        out.push(b'\\');
        p = rest;
    }
    let segs: Vec<&str> = p.split('.').collect();
    match segs.len() {
        1 => {}
        2 => out.push(0x2e), // DualNamePrefix
        n => {
            out.push(0x2f); // MultiNamePrefix
            out.push(n as u8);
        }
    }
    for s in segs {
        let mut b = s.as_bytes().to_vec();
        assert!(!b.is_empty() && b.len() <= 4, "bad AML name segment {s:?}");
        b.resize(4, b'_');
        out.extend(b);
    }
    out
}

pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, v as u8],
        0x100..=0xffff => {
            let mut o = vec![0x0b];
            o.extend((v as u16).to_le_bytes());
            o
        }
        0x1_0000..=0xffff_ffff => {
            let mut o = vec![0x0c];
            o.extend((v as u32).to_le_bytes());
            o
        }
        _ => {
            let mut o = vec![0x0e];
            o.extend(v.to_le_bytes());
            o
        }
    }
}

pub fn string(s: &str) -> Vec<u8> {
    let mut o = vec![0x0d];
    o.extend(s.as_bytes());
    o.push(0);
    o
}

/// Name(NAME, object)
pub fn name_decl(n: &str, object: Vec<u8>) -> Vec<u8> {
    let mut o = vec![0x08];
    o.extend(name(n));
    o.extend(object);
    o
}

fn with_pkg(prefix: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut o = prefix.to_vec();
    o.extend(pkg_length(body.len()));
    o.extend(body);
    o
}

/// Scope(NAME) { children }
pub fn scope(n: &str, children: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(n);
    children.iter().for_each(|c| body.extend(c));
    with_pkg(&[0x10], body)
}

/// Device(NAME) { children }
pub fn device(n: &str, children: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(n);
    children.iter().for_each(|c| body.extend(c));
    with_pkg(&[0x5b, 0x82], body)
}

/// Buffer() { bytes }
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend(bytes);
    with_pkg(&[0x11], body)
}

/// Package() { elements }
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    elements.iter().for_each(|e| body.extend(e));
    with_pkg(&[0x12], body)
}

/// ResourceTemplate with a 32-bit fixed memory range and one extended
/// interrupt (edge, active high, exclusive, consumer).
pub fn mmio_irq_resources(base: u32, len: u32, irq: u32) -> Vec<u8> {
    let mut r = vec![0x86, 0x09, 0x00, 0x01]; // Memory32Fixed, read-write
    r.extend(base.to_le_bytes());
    r.extend(len.to_le_bytes());
    r.extend([0x89, 0x06, 0x00, 0x03, 0x01]); // Extended IRQ: consumer|edge, 1 irq
    r.extend(irq.to_le_bytes());
    r.extend([0x79, 0x00]); // End tag
    buffer(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_lengths() {
        assert_eq!(pkg_length(10), vec![11]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 + 2 = 65 -> two bytes: 0x41, 0x04
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x1000), vec![0x83, 0x00, 0x01]);
    }

    #[test]
    fn names_and_ints() {
        assert_eq!(name("_HID"), b"_HID".to_vec());
        assert_eq!(name("\\_SB"), b"\\_SB_".to_vec());
        assert_eq!(name("\\_SB.V000"), b"\\\x2e_SB_V000".to_vec());
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(5), vec![0x0a, 5]);
        assert_eq!(integer(0xd000_0000), vec![0x0c, 0, 0, 0, 0xd0]);
        assert_eq!(string("AB"), vec![0x0d, b'A', b'B', 0]);
    }

    #[test]
    fn s5_package() {
        // Name (_S5, Package () { 5, 0 }) as iasl emits it.
        let s5 = name_decl("_S5_", package(&[integer(5), integer(0)]));
        assert_eq!(
            s5,
            vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]
        );
    }
}
