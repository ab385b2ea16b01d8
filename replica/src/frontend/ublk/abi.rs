//! The ublk kernel ABI, from <linux/ublk_cmd.h>. Encoded by hand (little-endian byte
//! layouts) so the layouts are checked by unit tests and no unsafe casts are needed.

use crate::error::Error;

/// Control commands (`UBLK_CMD_*`); sent ioctl-encoded: `_IOWR('u', nr, ublksrv_ctrl_cmd)`.
pub(super) const CMD_ADD_DEV: u8 = 0x04;
pub(super) const CMD_DEL_DEV: u8 = 0x05;
pub(super) const CMD_START_DEV: u8 = 0x06;
pub(super) const CMD_STOP_DEV: u8 = 0x07;
pub(super) const CMD_SET_PARAMS: u8 = 0x08;
/// I/O commands (`UBLK_IO_*`): `_IOWR('u', nr, ublksrv_io_cmd)`.
pub(super) const IO_FETCH_REQ: u8 = 0x20;
pub(super) const IO_COMMIT_AND_FETCH_REQ: u8 = 0x21;

pub(super) const CTRL_CMD_SIZE: usize = 32; // struct ublksrv_ctrl_cmd
pub(super) const IO_CMD_SIZE: usize = 16; // struct ublksrv_io_cmd
const DEV_INFO_SIZE: usize = 64; // struct ublksrv_ctrl_dev_info
pub(super) const IO_DESC_SIZE: usize = 24; // struct ublksrv_io_desc
/// Header + `ublk_param_basic` + `ublk_param_discard`.
const PARAMS_SIZE: usize = 60;

/// `UBLK_F_CMD_IOCTL_ENCODE`.
const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;

const PARAM_TYPE_BASIC: u32 = 1 << 0;
const PARAM_TYPE_DISCARD: u32 = 1 << 1;
const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
const ATTR_FUA: u32 = 1 << 3;

pub(super) const OP_READ: u8 = 0;
pub(super) const OP_WRITE: u8 = 1;
pub(super) const OP_FLUSH: u8 = 2;
pub(super) const OP_DISCARD: u8 = 3;
pub(super) const OP_WRITE_ZEROES: u8 = 5;
const IO_F_FUA: u32 = 1 << 13;

/// Offset of queue `q`'s descriptor array in the `/dev/ublkcN` mmap space:
/// `q * round_up(UBLK_MAX_QUEUE_DEPTH * sizeof(ublksrv_io_desc), PAGE_SIZE)`.
pub(super) const MAX_QUEUE_DEPTH: usize = 4096;

/// `_IOWR('u', nr, size)`.
pub(super) fn ioctl_op(nr: u8, size: usize) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    (IOC_READ_WRITE << 30) | ((size as u32) << 16) | (u32::from(b'u') << 8) | u32::from(nr)
}

/// `struct ublksrv_ctrl_cmd`, in the first bytes of an 80-byte URING_CMD payload.
/// `queue_id` is always -1 (the kernel insists on it for `ADD_DEV`).
pub(super) fn ctrl_cmd(dev_id: u32, buf_addr: u64, buf_len: u16, data0: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[0..4].copy_from_slice(&dev_id.to_le_bytes());
    c[4..6].copy_from_slice(&u16::MAX.to_le_bytes());
    c[6..8].copy_from_slice(&buf_len.to_le_bytes());
    c[8..16].copy_from_slice(&buf_addr.to_le_bytes());
    c[16..24].copy_from_slice(&data0.to_le_bytes());
    c
}

/// `struct ublksrv_io_cmd`.
pub(super) fn io_cmd(q_id: u16, tag: u16, result: i32, buf_addr: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0..2].copy_from_slice(&q_id.to_le_bytes());
    c[2..4].copy_from_slice(&tag.to_le_bytes());
    c[4..8].copy_from_slice(&result.to_le_bytes());
    c[8..16].copy_from_slice(&buf_addr.to_le_bytes());
    c
}

/// `struct ublksrv_ctrl_dev_info` for `ADD_DEV` (device number chosen by the kernel).
pub(super) fn dev_info(queues: u16, depth: u16, max_io_bytes: u32) -> [u8; DEV_INFO_SIZE] {
    let mut d = [0u8; DEV_INFO_SIZE];
    d[0..2].copy_from_slice(&queues.to_le_bytes());
    d[2..4].copy_from_slice(&depth.to_le_bytes());
    d[8..12].copy_from_slice(&max_io_bytes.to_le_bytes());
    d[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    d[24..32].copy_from_slice(&F_CMD_IOCTL_ENCODE.to_le_bytes());
    d
}

/// (nr_hw_queues, queue_depth, dev_id) from a `ublksrv_ctrl_dev_info` the kernel filled in.
pub(super) fn parse_dev_info(d: &[u8; DEV_INFO_SIZE]) -> (u16, u16, u32) {
    (
        u16::from_le_bytes([d[0], d[1]]),
        u16::from_le_bytes([d[2], d[3]]),
        u32::from_le_bytes([d[12], d[13], d[14], d[15]]),
    )
}

/// `struct ublk_params` with the basic and discard parameters.
pub(super) fn params(size: u64, logical_block_size: u32, max_io_bytes: u32) -> [u8; PARAMS_SIZE] {
    let shift = logical_block_size.trailing_zeros() as u8;
    let mut p = [0u8; PARAMS_SIZE];
    p[0..4].copy_from_slice(&(PARAMS_SIZE as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(PARAM_TYPE_BASIC | PARAM_TYPE_DISCARD).to_le_bytes());
    // ublk_param_basic at 8.
    p[8..12].copy_from_slice(&(ATTR_VOLATILE_CACHE | ATTR_FUA).to_le_bytes());
    p[12] = shift; // logical_bs_shift
    p[13] = 12; // physical_bs_shift
    p[14] = 12; // io_opt_shift
    p[15] = shift; // io_min_shift
    p[16..20].copy_from_slice(&(max_io_bytes >> 9).to_le_bytes()); // max_sectors
    p[24..32].copy_from_slice(&(size >> 9).to_le_bytes()); // dev_sectors

    // ublk_param_discard at 40: one segment, block granularity, up to 1 GiB at once.
    p[44..48].copy_from_slice(&logical_block_size.to_le_bytes());
    p[48..52].copy_from_slice(&((1u32 << 30) >> 9).to_le_bytes());
    p[56..58].copy_from_slice(&1u16.to_le_bytes());
    p
}

/// One request as the kernel describes it (`struct ublksrv_io_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IoDesc {
    pub(super) op: u8,
    pub(super) fua: bool,
    pub(super) offset: u64,
    pub(super) len: u64,
}

pub(super) fn parse_io_desc(d: &[u8; IO_DESC_SIZE]) -> IoDesc {
    let op_flags = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let nr_sectors = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    let mut start = [0u8; 8];
    start.copy_from_slice(&d[8..16]);
    IoDesc {
        op: (op_flags & 0xff) as u8,
        fua: op_flags & IO_F_FUA != 0,
        offset: u64::from_le_bytes(start) << 9,
        len: u64::from(nr_sectors) << 9,
    }
}

/// The negative errno a failed target operation is reported with.
pub(super) fn errno_of(e: &Error) -> i32 {
    match e {
        Error::OutOfRange { .. } | Error::InvalidArgument(_) => -libc::EINVAL,
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(code @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => -code,
            _ => -libc::EIO,
        },
        _ => -libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_encoding_matches_the_kernel_header() {
        // UBLK_U_CMD_ADD_DEV = _IOWR('u', 0x04, struct ublksrv_ctrl_cmd) = 0xc0207504.
        assert_eq!(ioctl_op(CMD_ADD_DEV, CTRL_CMD_SIZE), 0xc020_7504);
        // UBLK_U_IO_FETCH_REQ = _IOWR('u', 0x20, struct ublksrv_io_cmd) = 0xc0107520.
        assert_eq!(ioctl_op(IO_FETCH_REQ, IO_CMD_SIZE), 0xc010_7520);
        assert_eq!(ioctl_op(IO_COMMIT_AND_FETCH_REQ, IO_CMD_SIZE), 0xc010_7521);
        let nix_code = nix::request_code_readwrite!(b'u', CMD_STOP_DEV, CTRL_CMD_SIZE);
        assert_eq!(u64::from(ioctl_op(CMD_STOP_DEV, CTRL_CMD_SIZE)), nix_code);
    }

    #[test]
    fn structures_are_laid_out_like_the_kernel_header() {
        let c = ctrl_cmd(7, 0x1122_3344_5566_7788, 64, 42);
        assert_eq!(&c[0..4], &7u32.to_le_bytes());
        assert_eq!(&c[4..6], &[0xff, 0xff]);
        assert_eq!(&c[6..8], &64u16.to_le_bytes());
        assert_eq!(&c[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&c[16..24], &42u64.to_le_bytes());
        assert!(c[24..].iter().all(|&b| b == 0));

        let info = dev_info(2, 64, 512 << 10);
        assert_eq!(parse_dev_info(&info), (2, 64, u32::MAX));
        assert_eq!(&info[24..32], &F_CMD_IOCTL_ENCODE.to_le_bytes());

        let p = params(1 << 30, 4096, 512 << 10);
        assert_eq!(u32::from_le_bytes(p[0..4].try_into().unwrap()), 60);
        assert_eq!((p[12], p[13]), (12, 12));
        assert_eq!(u32::from_le_bytes(p[16..20].try_into().unwrap()), 1024);
        assert_eq!(u64::from_le_bytes(p[24..32].try_into().unwrap()), 1 << 21);
        assert_eq!(u32::from_le_bytes(p[44..48].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(p[56..58].try_into().unwrap()), 1);
        let p512 = params(1 << 20, 512, 4096);
        assert_eq!((p512[12], p512[15]), (9, 9));

        let cmd = io_cmd(1, 5, -5, 0xabc);
        assert_eq!(&cmd[0..2], &1u16.to_le_bytes());
        assert_eq!(&cmd[2..4], &5u16.to_le_bytes());
        assert_eq!(&cmd[4..8], &(-5i32).to_le_bytes());
        assert_eq!(&cmd[8..16], &0xabcu64.to_le_bytes());

        let mut d = [0u8; IO_DESC_SIZE];
        d[0..4].copy_from_slice(&(u32::from(OP_WRITE) | IO_F_FUA).to_le_bytes());
        d[4..8].copy_from_slice(&8u32.to_le_bytes());
        d[8..16].copy_from_slice(&16u64.to_le_bytes());
        let desc = parse_io_desc(&d);
        assert_eq!(
            desc,
            IoDesc {
                op: OP_WRITE,
                fua: true,
                offset: 16 * 512,
                len: 4096
            }
        );
    }

    #[test]
    fn errors_map_to_errnos() {
        let enospc = Error::io("x")(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno_of(&enospc), -libc::ENOSPC);
        let other = Error::io("x")(std::io::Error::from_raw_os_error(libc::EBADF));
        assert_eq!(errno_of(&other), -libc::EIO);
        assert_eq!(
            errno_of(&Error::OutOfRange {
                offset: 0,
                len: 1,
                size: 0
            }),
            -libc::EINVAL
        );
        assert_eq!(errno_of(&Error::Unavailable("x".into())), -libc::EIO);
    }
}
