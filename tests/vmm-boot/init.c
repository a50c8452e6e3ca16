/* PID 1 of the boot test's guest: writes the boot-time marker (byte 123 at
 * moat-vmm's marker address, through /dev/mem), prints its uptime on the
 * console, and ends the VM, which ends moat-vmm with status 0: x86_64 reboots
 * (the guest has no ACPI to power off with), arm64 powers off through PSCI.
 * Init arguments (after " -- " on the kernel command line): "panic" exits
 * instead, so the kernel panics; "reboot" reboots on arm64 too (PSCI
 * SYSTEM_RESET); "cpuinfo" prints /proc/cpuinfo first; "devices" exercises the
 * virtio devices first: 16 bytes of /dev/hwrng, the text at the start of
 * /dev/vda, and a virtio-fs share tagged "share" (reads hello.txt, writes
 * from-guest.txt). Test-only; built with gcc -static (aarch64-linux-gnu-gcc for
 * arm64). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

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
    }
    if (argc > 1 && strcmp(argv[1], "cpuinfo") == 0) {
        char buf[4096];
        int c = open("/proc/cpuinfo", O_RDONLY);
        ssize_t n;
        while (c >= 0 && (n = read(c, buf, sizeof(buf))) > 0) fwrite(buf, 1, n, stdout);
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
