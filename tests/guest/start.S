/*
 * PVH entry of the splitvm test guest.
 *
 * PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h): the loader
 * finds our 32-bit entry point in the ELF note XEN_ELFNOTE_PHYS32_ENTRY
 * (type 18, name "Xen") and jumps there in 32-bit protected mode, paging
 * off, flat 4 GiB segments, interrupts off, with %ebx = physical address
 * of struct hvm_start_info.  Nothing else (not even a stack) is promised.
 *
 * We load our own GDT (flat code 0x08 / data 0x10), set up a stack, clear
 * .bss and call guest_main(start_info).
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* ---- the PVH note ---- */
    .section .note.pvh, "a"
    .p2align 2
    .long   2f - 1f             /* namesz ("Xen\0") */
    .long   4f - 3f             /* descsz */
    .long   XEN_ELFNOTE_PHYS32_ENTRY
1:  .asciz  "Xen"
2:  .p2align 2
    /* 8 bytes, like Linux: QEMU reads a 64-bit value from the note of an
     * ELF64 file, linux-loader reads the low 32 bits. */
3:  .long   pvh_start
    .long   0
4:  .p2align 2

/* ---- entry ---- */
    .section .text.start, "ax"
    .code32
    .globl  pvh_start
    .type   pvh_start, @function
pvh_start:
    cli
    cld
    /* Our own GDT: do not depend on the loader's. */
    lgdt    gdt_desc
    ljmp    $0x08, $1f
1:  movl    $0x10, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs

    /* Clear .bss (the loader need not zero it); keep %ebx. */
    movl    $__bss_start, %edi
    movl    $__bss_end, %ecx
    subl    %edi, %ecx
    xorl    %eax, %eax
    rep stosb

    movl    $stack_top, %esp
    xorl    %ebp, %ebp
    pushl   $0                  /* clear EFLAGS (IF, DF, AC...) */
    popfl

    pushl   %ebx                /* struct hvm_start_info * */
    call    guest_main

    /* guest_main does not return; if it does: stop. */
2:  cli
    hlt
    jmp     2b
    .size   pvh_start, . - pvh_start

/* ---- GDT ---- */
    .section .rodata
    .p2align 3
gdt:
    .quad   0                           /* null */
    .quad   0x00cf9a000000ffff          /* 0x08: code, base 0, 4 GiB, 32-bit */
    .quad   0x00cf92000000ffff          /* 0x10: data, base 0, 4 GiB */
gdt_end:
gdt_desc:
    .word   gdt_end - gdt - 1
    .long   gdt

/* ---- stack ---- */
    .section .bss
    .p2align 4
stack_bottom:
    .skip   16384
stack_top:

    .section .note.GNU-stack, "", @progbits
