/* PID 1 of the boot test's guest: writes the boot-time marker (byte 123 at
 * moat-vmm's marker address, through /dev/mem), prints its uptime on the
 * console, and ends the VM, which ends moat-vmm with status 0: x86_64 reboots
 * (the guest has no ACPI to power off with), arm64 powers off through PSCI.
 * Init arguments (after " -- " on the kernel command line): "panic" exits
 * instead, so the kernel panics; "reboot" reboots on arm64 too (PSCI
 * SYSTEM_RESET); "cpuinfo" prints /proc/cpuinfo first; "dmesg" prints the
 * kernel's log (with its timestamps, also under "quiet"), to see where a boot
 * spent its time; "devices" exercises the virtio devices first: 16 bytes of
 * /dev/hwrng, the text at the start of /dev/vda, and a virtio-fs share tagged
 * "share" (reads hello.txt, writes from-guest.txt). After "devices", options:
 *   ro=TAG                a read-only virtio-fs share: reads hello.txt, and
 *                         every kind of write there must fail with EROFS
 *   vsock=LISTEN:PEER:N   vsock with the host, both ways on two connections:
 *                         one the host opens to our port LISTEN, one we open
 *                         to the host (CID 2) port PEER; on each we send N
 *                         random bytes while reading what the host sends,
 *                         and print the sha256 of both directions
 * Every result is one "moat-boot-test: ..." line on the console, for the host
 * to check. Test-only; built with gcc -static (aarch64-linux-gnu-gcc for
 * arm64). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/klog.h>
#include <sys/socket.h>
/* After sys/socket.h, which it needs (the arm64 headers do not include it). */
#include <linux/vm_sockets.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sha256.h"

#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004
#endif

/* moat-vmm's arch/{x86_64,aarch64}/layout.rs BOOT_MARKER_START. */
#if defined(__x86_64__)
#define BOOT_MARKER_ADDR 0xd0000000UL
#elif defined(__aarch64__)
#define BOOT_MARKER_ADDR 0x40000000UL
#else
#error "no boot marker address for this architecture"
#endif

/* Reads up to len-1 bytes of path into buf as a string; "" on failure. */
static void read_text(const char *path, char *buf, size_t len) {
    buf[0] = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("moat-boot-test: open %s: %s\n", path, strerror(errno));
        return;
    }
    ssize_t n = read(fd, buf, len - 1);
    buf[n > 0 ? n : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
    close(fd);
}

static void exercise_devices(void) {
    unsigned char rnd[16];
    int fd = open("/dev/hwrng", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, rnd, sizeof(rnd)) : -1;
    if (n == (ssize_t)sizeof(rnd)) {
        printf("moat-boot-test: hwrng ");
        for (int i = 0; i < n; i++) printf("%02x", rnd[i]);
        printf("\n");
    } else {
        printf("moat-boot-test: hwrng: %s\n", strerror(errno));
    }
    if (fd >= 0) close(fd);

    char buf[256];
    read_text("/dev/vda", buf, 64);
    printf("moat-boot-test: disk %s\n", buf);

    mkdir("/mnt", 0755);
    if (mount("share", "/mnt", "virtiofs", 0, NULL) != 0) {
        printf("moat-boot-test: mount virtiofs: %s\n", strerror(errno));
        return;
    }
    read_text("/mnt/hello.txt", buf, sizeof(buf));
    printf("moat-boot-test: share %s\n", buf);
    int w = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w < 0 || write(w, "written by the guest\n", 21) != 21 || fsync(w) != 0) {
        printf("moat-boot-test: write share: %s\n", strerror(errno));
    }
    if (w >= 0) close(w);
    umount("/mnt");
}

/* errno's name for the ones the share checks expect, else its text. */
static const char *errno_name(int e) {
    switch (e) {
    case EROFS: return "EROFS";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case EINVAL: return "EINVAL";
    default: return strerror(e);
    }
}

/* One mutation on the read-only share: "ro <op> EROFS" is the expected line. */
static void ro_result(const char *op, int rc) {
    if (rc == 0)
        printf("moat-boot-test: ro %s succeeded\n", op);
    else
        printf("moat-boot-test: ro %s %s\n", op, errno_name(errno));
}

/* Mounts the read-only share `tag` at /ro, reads hello.txt, and tries every
 * kind of change: each must fail with EROFS and leave the host's files alone. */
static void check_ro_share(const char *tag) {
    char buf[256];
    mkdir("/ro", 0755);
    if (mount(tag, "/ro", "virtiofs", 0, NULL) != 0) {
        printf("moat-boot-test: ro mount %s: %s\n", tag, strerror(errno));
        return;
    }
    read_text("/ro/hello.txt", buf, sizeof(buf));
    printf("moat-boot-test: ro read %s\n", buf);
    int fd = open("/ro/new.txt", O_WRONLY | O_CREAT | O_EXCL, 0644);
    ro_result("create", fd >= 0 ? 0 : -1);
    if (fd >= 0) close(fd);
    fd = open("/ro/hello.txt", O_WRONLY);
    ro_result("open-write", fd >= 0 ? 0 : -1);
    if (fd >= 0) {
        ro_result("write", write(fd, "x", 1) == 1 ? 0 : -1);
        close(fd);
    }
    ro_result("truncate", truncate("/ro/hello.txt", 0));
    ro_result("mkdir", mkdir("/ro/newdir", 0755));
    ro_result("unlink", unlink("/ro/hello.txt"));
    ro_result("rename", rename("/ro/hello.txt", "/ro/renamed.txt"));
    ro_result("chmod", chmod("/ro/hello.txt", 0600));
    ro_result("symlink", symlink("hello.txt", "/ro/link"));
    fflush(stdout);
    umount("/ro");
}

/* Sends n random bytes on the connected socket fd while reading whatever the
 * host sends until it closes its side; half-closes after the last byte. Prints
 * "vsock <kind> sent=<n> sha256=<hex> received=<m> sha256=<hex>". */
static void vsock_exchange(int fd, const char *kind, size_t n) {
    uint8_t *out = malloc(n ? n : 1);
    static uint8_t in[65536];
    if (!out) {
        printf("moat-boot-test: vsock %s: out of memory\n", kind);
        return;
    }
    for (size_t off = 0; off < n;) {
        ssize_t r = getrandom(out + off, n - off, GRND_INSECURE);
        if (r <= 0) {
            printf("moat-boot-test: vsock %s: getrandom: %s\n", kind, strerror(errno));
            free(out);
            return;
        }
        off += (size_t)r;
    }
    struct sha256 sent_hash, recv_hash;
    sha256_init(&sent_hash);
    sha256_init(&recv_hash);
    sha256_update(&sent_hash, out, n);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    size_t sent = 0, received = 0;
    int write_done = 0, read_done = 0;
    if (n == 0) {
        shutdown(fd, SHUT_WR);
        write_done = 1;
    }
    const char *error = NULL;
    while (!(write_done && read_done) && !error) {
        struct pollfd p = {.fd = fd, .events = (read_done ? 0 : POLLIN) | (write_done ? 0 : POLLOUT)};
        int r = poll(&p, 1, 60000);
        if (r == 0) {
            error = "no progress for 60 s";
            break;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            error = strerror(errno);
            break;
        }
        if (!read_done && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = read(fd, in, sizeof(in));
            if (got > 0) {
                sha256_update(&recv_hash, in, (size_t)got);
                received += (size_t)got;
            } else if (got == 0) {
                read_done = 1;
            } else if (errno != EAGAIN && errno != EINTR) {
                error = strerror(errno);
            }
        }
        if (!write_done && !error && (p.revents & POLLOUT)) {
            size_t chunk = n - sent < 65536 ? n - sent : 65536;
            ssize_t put = write(fd, out + sent, chunk);
            if (put > 0) {
                sent += (size_t)put;
                if (sent == n) {
                    shutdown(fd, SHUT_WR);
                    write_done = 1;
                }
            } else if (put < 0 && errno != EAGAIN && errno != EINTR) {
                error = strerror(errno);
            }
        } else if (!write_done && !error && (p.revents & (POLLHUP | POLLERR)) && read_done) {
            error = "host closed before taking all bytes";
        }
    }
    free(out);
    if (error) {
        printf("moat-boot-test: vsock %s: after %zu bytes sent, %zu received: %s\n", kind,
               sent, received, error);
        return;
    }
    char sent_hex[65], recv_hex[65];
    sha256_hex(&sent_hash, sent_hex);
    sha256_hex(&recv_hash, recv_hex);
    printf("moat-boot-test: vsock %s sent=%zu sha256=%s received=%zu sha256=%s\n", kind, sent,
           sent_hex, received, recv_hex);
}

/* vsock=LISTEN:PEER:N: listens on LISTEN first (so the host's connection waits
 * in the backlog), connects to the host's PEER and exchanges, then accepts the
 * host's connection and exchanges. */
static void check_vsock(const char *spec) {
    unsigned listen_port, peer_port;
    size_t n;
    if (sscanf(spec, "%u:%u:%zu", &listen_port, &peer_port, &n) != 3) {
        printf("moat-boot-test: vsock: bad option %s\n", spec);
        return;
    }
    int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                               .svm_port = listen_port};
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(ls, 4) != 0) {
        printf("moat-boot-test: vsock listen %u: %s\n", listen_port, strerror(errno));
        if (ls >= 0) close(ls);
        return;
    }
    int cs = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm host = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST,
                               .svm_port = peer_port};
    if (cs < 0 || connect(cs, (struct sockaddr *)&host, sizeof(host)) != 0) {
        printf("moat-boot-test: vsock guest-connect: connect 2:%u: %s\n", peer_port,
               strerror(errno));
    } else {
        vsock_exchange(cs, "guest-connect", n);
    }
    if (cs >= 0) close(cs);
    fflush(stdout);
    struct pollfd p = {.fd = ls, .events = POLLIN};
    errno = 0;
    int as = poll(&p, 1, 60000) == 1 ? accept(ls, NULL, NULL) : -1;
    if (as < 0) {
        printf("moat-boot-test: vsock host-connect: accept on %u: %s\n", listen_port,
               errno ? strerror(errno) : "nothing within 60 s");
    } else {
        vsock_exchange(as, "host-connect", n);
        close(as);
    }
    close(ls);
    fflush(stdout);
}

int main(int argc, char **argv) {
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        mkdir("/dev", 0755);
        mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
        fd = open("/dev/mem", O_RDWR | O_SYNC);
    }
    if (fd >= 0) {
        volatile uint8_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                                   BOOT_MARKER_ADDR);
        if (p != MAP_FAILED) {
            *p = 123;
            munmap((void *)p, 4096);
        } else {
            perror("init: mmap /dev/mem");
        }
        close(fd);
    } else {
        perror("init: open /dev/mem");
    }
    mkdir("/proc", 0555);
    mount("proc", "/proc", "proc", 0, NULL);
    char up[64] = "?";
    int u = open("/proc/uptime", O_RDONLY);
    if (u >= 0) {
        ssize_t n = read(u, up, sizeof(up) - 1);
        up[n > 0 ? n : 0] = 0;
        char *sp = strchr(up, ' ');
        if (sp) *sp = 0;
        close(u);
    }
    printf("moat-boot-test: init reached, uptime %s s, %ld cpus\n", up,
           sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "devices") == 0) {
        exercise_devices();
        fflush(stdout);
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "ro=", 3) == 0)
                check_ro_share(argv[i] + 3);
            else if (strncmp(argv[i], "vsock=", 6) == 0)
                check_vsock(argv[i] + 6);
            else
                printf("moat-boot-test: unknown option %s\n", argv[i]);
        }
        fflush(stdout);
    }
    if (argc > 1 && strcmp(argv[1], "cpuinfo") == 0) {
        char buf[4096];
        int c = open("/proc/cpuinfo", O_RDONLY);
        ssize_t n;
        while (c >= 0 && (n = read(c, buf, sizeof(buf))) > 0) fwrite(buf, 1, n, stdout);
        fflush(stdout);
    }
    if (argc > 1 && strcmp(argv[1], "dmesg") == 0) {
        static char log[1 << 18];
        int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof(log));
        if (n > 0) fwrite(log, 1, (size_t)n, stdout);
        else printf("moat-boot-test: klogctl: %s\n", strerror(errno));
        fflush(stdout);
    }
    if (argc > 1 && strcmp(argv[1], "panic") == 0) return 1;
    sync();
#if defined(__aarch64__)
    if (!(argc > 1 && strcmp(argv[1], "reboot") == 0)) reboot(RB_POWER_OFF);
#endif
    reboot(RB_AUTOBOOT);
    return 0;
}
