// Module images for the simulated driver: an sm_90 ELF cubin (as NVRTC writes it) or PTX text. The image only
// tells the simulator which kernels a module holds (their code is the host build of the same source) and, for a
// cubin, what each kernel needs from the device: its register count (EIATTR_REGCOUNT in .nv.info) and its
// static shared memory (the size of .nv.shared.NAME, less the 1 KiB sm_90 reserves for the system, which NVRTC
// includes there), which a launch is checked against as a GPU would.
#include <elf.h>

#include <cstring>

#include "sim_internal.h"

namespace sim
{
namespace
{
constexpr unsigned kEiattrRegcount = 0x2f;
constexpr unsigned kEifmtSval = 4;
constexpr long kReservedShared = 1024;

bool isIdent(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$'; }

int readCubin(const unsigned char* img, Module& m)
{
    const Elf64_Ehdr* eh = reinterpret_cast<const Elf64_Ehdr*>(img);
    if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB) return INVALID_IMAGE;
    if (eh->e_machine != 190 /* EM_CUDA */) return INVALID_IMAGE;
    // The architecture: e_flags bits 0-7 in ELF ABI version 7 (CUDA 11 and 12), bits 8-15 in version 8.
    unsigned abi = eh->e_ident[EI_ABIVERSION];
    unsigned sm = abi == 7 ? (eh->e_flags & 0xff) : abi >= 8 ? ((eh->e_flags >> 8) & 0xff) : 0;
    if (sm != 0 && (sm / 10 != 9 || sm > 90)) return fail(NO_BINARY_FOR_GPU, format("the cubin is for sm_%u; this device is sm_90", sm));
    if (eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shnum == 0 || eh->e_shoff == 0) return INVALID_IMAGE;
    const Elf64_Shdr* sh = reinterpret_cast<const Elf64_Shdr*>(img + eh->e_shoff);
    const char* sectionNames = eh->e_shstrndx != 0 && eh->e_shstrndx < eh->e_shnum && sh[eh->e_shstrndx].sh_type == SHT_STRTAB
                                   ? reinterpret_cast<const char*>(img + sh[eh->e_shstrndx].sh_offset)
                                   : nullptr;
    // Function symbols, by symbol index (EIATTR_REGCOUNT names its kernel by index).
    std::vector<std::string> symbolNames;
    for (unsigned i = 0; i < eh->e_shnum; i++)
    {
        if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_entsize != sizeof(Elf64_Sym) || sh[i].sh_link >= eh->e_shnum) continue;
        const Elf64_Shdr& strtab = sh[sh[i].sh_link];
        const char* strings = reinterpret_cast<const char*>(img + strtab.sh_offset);
        const Elf64_Sym* syms = reinterpret_cast<const Elf64_Sym*>(img + sh[i].sh_offset);
        size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
        symbolNames.assign(count, "");
        for (size_t k = 0; k < count; k++)
            if (ELF64_ST_TYPE(syms[k].st_info) == STT_FUNC && syms[k].st_name < strtab.sh_size)
            {
                symbolNames[k] = strings + syms[k].st_name;
                m.kernels[symbolNames[k]];
            }
    }
    if (!sectionNames) return SUCCESS;
    for (unsigned i = 0; i < eh->e_shnum; i++)
    {
        const char* name = sectionNames + sh[i].sh_name;
        if (strcmp(name, ".nv.info") == 0)
        {
            // Attributes: u8 format, u8 attribute, u16 size, then size bytes (EIFMT_SVAL) or nothing.
            const unsigned char* p = img + sh[i].sh_offset;
            const unsigned char* end = p + sh[i].sh_size;
            while (p + 4 <= end)
            {
                unsigned fmt = p[0], attr = p[1], size = (unsigned)(p[2] | p[3] << 8);
                if (fmt != kEifmtSval)
                {
                    p += 4;
                    continue;
                }
                if (p + 4 + size > end) break;
                if (attr == kEiattrRegcount && size == 8)
                {
                    uint32_t sym, regs;
                    memcpy(&sym, p + 4, 4);
                    memcpy(&regs, p + 8, 4);
                    if (sym < symbolNames.size() && !symbolNames[sym].empty()) m.kernels[symbolNames[sym]].registers = (int)regs;
                }
                p += 4 + size;
            }
        }
        else if (strncmp(name, ".nv.shared.", 11) == 0)
        {
            long bytes = (long)sh[i].sh_size;
            m.kernels[name + 11].staticShared = bytes >= kReservedShared ? bytes - kReservedShared : bytes;
        }
    }
    return SUCCESS;
}

// PTX text: comments and white space, then ".version"; entries are ".entry NAME(".
int readPtx(const char* text, Module& m)
{
    const char* p = text;
    for (;;)
    {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (p[0] == '/' && p[1] == '/')
        {
            while (*p && *p != '\n') p++;
            continue;
        }
        if (p[0] == '/' && p[1] == '*')
        {
            const char* e = strstr(p + 2, "*/");
            if (!e) return INVALID_IMAGE;
            p = e + 2;
            continue;
        }
        break;
    }
    if (strncmp(p, ".version", 8) != 0) return INVALID_IMAGE;
    for (const char* q = strstr(p, ".entry"); q; q = strstr(q + 6, ".entry"))
    {
        const char* s = q + 6;
        if (!(*s == ' ' || *s == '\t')) continue;
        while (*s == ' ' || *s == '\t') s++;
        const char* e = s;
        while (isIdent(*e)) e++;
        if (e > s) m.kernels[std::string(s, e)];
    }
    return SUCCESS;
}
}  // namespace

int readImage(const void* image, Module& m)
{
    const unsigned char* img = static_cast<const unsigned char*>(image);
    if (img[0] == 0x7f && img[1] == 'E' && img[2] == 'L' && img[3] == 'F') return readCubin(img, m);
    return readPtx(static_cast<const char*>(image), m);
}

std::unordered_map<std::string, Kernel*>& registry()
{
    static std::unordered_map<std::string, Kernel*> r;
    return r;
}
}  // namespace sim
