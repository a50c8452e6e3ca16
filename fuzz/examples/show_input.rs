//! Prints a structured target's input as the target decodes it:
//! `show-input <target> <file>`. For the byte-stream targets (agent_frame,
//! manifest, vmm_config, layer_unpack raw mode) the file itself is the input.

use moat_fuzz::inputs::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: show-input <target> <file>");
        std::process::exit(2);
    };
    let data = std::fs::read(&file).expect("read input");
    let shown = match target.as_str() {
        "queue_chain" => format!("{:#?}", moat_fuzz::decode::<queue_chain::Input>(&data)),
        "block_req" => format!("{:#?}", moat_fuzz::decode::<block_req::Input>(&data)),
        "net_tx" => format!("{:#?}", moat_fuzz::decode::<net_tx::Input>(&data)),
        "vsock_tx" => format!("{:#?}", moat_fuzz::decode::<vsock_tx::Input>(&data)),
        "fs_fuse" => format!("{:#?}", moat_fuzz::decode::<fs_fuse::Input>(&data)),
        "virtio_mmio" => format!("{:#?}", moat_fuzz::decode::<virtio_mmio::Input>(&data)),
        "layer_unpack" => match data.split_first() {
            Some((m, rest)) if m % 2 == 0 => {
                format!("{:#?}", moat_fuzz::decode::<layer_unpack::Layer>(rest))
            }
            _ => format!("raw stream: {:?}", String::from_utf8_lossy(&data)),
        },
        _ => format!("{:?}", String::from_utf8_lossy(&data)),
    };
    println!("{shown}");
}
