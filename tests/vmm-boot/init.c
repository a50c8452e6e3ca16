/* PID 1 of the boot test's guest: writes the boot-time marker (byte 123 at
 * 0xd0000000, through /dev/mem), prints its uptime on the console, and
 * reboots, which ends moat-vmm with status 0. Init arguments (after " -- " on
 * the kernel command line): "panic" exits instead, so the kernel panics;
 * "cpuinfo" prints /proc/cpuinfo first. Test-only; built with gcc -static. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#define BOOT_MARKER_ADDR 0xd0000000UL

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
    if (argc > 1 && strcmp(argv[1], "cpuinfo") == 0) {
        char buf[4096];
        int c = open("/proc/cpuinfo", O_RDONLY);
        ssize_t n;
        while (c >= 0 && (n = read(c, buf, sizeof(buf))) > 0) fwrite(buf, 1, n, stdout);
        fflush(stdout);
    }
    if (argc > 1 && strcmp(argv[1], "panic") == 0) return 1;
    sync();
    reboot(RB_AUTOBOOT);
    return 0;
}
